#!/usr/bin/env python3
"""pytusd benchmark: pytusd against tusd (Go), @tus/server (Node), a raw sink, boto3 and itself, on the same machine
in the same run (bench/README.md).

Usually started through ``scripts/bench`` (which sets up the venv, the Node peer and tusd first)::

    scripts/bench                              # all five scenarios, 3 rounds each
    scripts/bench upload-1g --size 64MiB --rounds 1
    scripts/bench --list

This file only puts the checkout on the path and hands over to bench.cli: the scenarios are in bench/scenarios/, what
they measure with in bench/harness/, the real services (Ceph for scenario 4) in testbed/, shared with the tests.
"""

from __future__ import annotations

import os
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
# Run as a script, Python puts bench/ first on the path: its modules are imported as the package bench of the checkout
# instead (and testbed next to it), never under a second, top-level name.
sys.path[:] = [REPO_DIR] + [p for p in sys.path if os.path.abspath(p or os.curdir) not in (BENCH_DIR, REPO_DIR)]

from bench.cli import main  # noqa: E402  (after the path is set)

if __name__ == "__main__":
    sys.exit(main())
