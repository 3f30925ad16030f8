"""How a scenario ends other than with a result."""

from __future__ import annotations


class BenchError(Exception):
    """Something broke: a server did not start, rejected an upload, or stored the wrong bytes."""


class ScenarioSkipped(Exception):
    """A scenario cannot run on this machine (e.g. Ceph is not installed): reported, not a failure."""
