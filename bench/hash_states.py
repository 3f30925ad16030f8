"""The hashes ``--digest`` could use, measured: MB/s hashing 256 MiB in 1 MiB and 64 KiB updates, and whether the
running state can be saved and resumed in another process.

    .venv/bin/python bench/hash_states.py            # pytusd.hashstate against hashlib (not resumable)
    pip install resumablesha256 cykooz.rehash rehash  # into a throw-away venv, then run it there to add them

Candidates that are not installed are reported as such. Notes and figures: bench/NOTES.md ("Whole-upload digests").
"""

from __future__ import annotations

import hashlib
import importlib
import pickle
import time
from collections.abc import Callable
from typing import Any

TOTAL = 256 << 20


def rate(make: Callable[[], Any], block: int) -> float:
    data = b"\xa5" * block
    h = make()
    start = time.perf_counter()
    for _ in range(TOTAL // block):
        h.update(data)
    return TOTAL / (time.perf_counter() - start) / 1e6


def resumes(make: Callable[[], Any], save: Callable[[Any], Any], load: Callable[[Any], Any]) -> bool:
    h = make()
    h.update(b"abc")
    other = load(save(h))
    other.update(b"def")
    return bool(other.digest() == hashlib.sha256(b"abcdef").digest())


def candidates() -> list[tuple[str, Callable[[], Any], Callable[[Any], Any] | None, Callable[[Any], Any] | None]]:
    from pytusd.hashstate import ResumableHash

    found: list[tuple[str, Callable[[], Any], Callable[[Any], Any] | None, Callable[[Any], Any] | None]] = [
        ("hashlib.sha256 (no state export)", hashlib.sha256, None, None),
        ("pytusd.hashstate sha256 (OpenSSL context)", lambda: ResumableHash("sha256"),
         lambda h: h.state(), lambda s: ResumableHash.resume("sha256", s)),
    ]
    for module, label, attr in (("resumablesha256", "resumablesha256", "sha256"), ("rehash", "rehash", "sha256")):
        try:
            make = getattr(importlib.import_module(module), attr)
            make()  # rehash refuses OpenSSL 3 here
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot run is reported, not fatal
            print(f"{label}: not usable here ({type(exc).__name__}: {exc})")
            continue
        found.append((label, make, pickle.dumps, pickle.loads))
    return found


def main() -> None:
    for label, make, save, load in candidates():
        ok = "resumable" if save and load and resumes(make, save, load) else "not resumable"
        print(f"{label:45s} {rate(make, 1 << 20):7.0f} MB/s (1 MiB)  {rate(make, 64 << 10):7.0f} MB/s (64 KiB)  {ok}")


if __name__ == "__main__":
    main()
