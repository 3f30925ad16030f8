"""Where the bench's files and peers are: the checkout, its .venv, bench/peers, bench/results."""

from __future__ import annotations

import os


BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_DIR = os.path.dirname(BENCH_DIR)
PEERS_DIR = os.path.join(BENCH_DIR, "peers")
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
VENV_BIN = os.path.join(REPO_DIR, ".venv", "bin")
# tusd, built by scripts/bench with `go install` (bench/README.md, "Peers"); absent when Go is not installed.
TUSD_BIN = os.path.join(PEERS_DIR, "go", "bin", "tusd")
# rustus, built by scripts/install-rustus with `cargo install` (bench/README.md, "The rustus peer"); may be absent.
RUSTUS_BIN = os.path.join(PEERS_DIR, "cargo", "bin", "rustus")
