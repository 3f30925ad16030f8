"""The real services the test suite and the bench run against (testbed.services), in neither of them: tests/ and
bench/ both import them from here. Not part of the pytusd package (pyproject installs src/ only)."""
