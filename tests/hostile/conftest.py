"""Shared by the hostile-client tests: the real ``pytusd`` process of tests/e2e (one per test, stopped by its PID),
and one request straight into an ASGI app with exactly the header bytes given."""

from __future__ import annotations

from tests.conftest import asgi  # noqa: F401  (for the tests of this folder)
from tests.e2e.conftest import pytusd_factory  # noqa: F401  (a fixture, for the tests of this folder)
