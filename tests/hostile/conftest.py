"""Shared by the hostile-client tests: the real ``pytusd`` process of tests/e2e, one per test, stopped by its PID."""

from tests.e2e.conftest import pytusd_factory  # noqa: F401  (a fixture, for the tests of this folder)
