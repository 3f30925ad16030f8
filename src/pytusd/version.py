"""The version of pytusd (one place: the package, the CLI, traces and the build read it)."""

__version__ = "0.1.0"
