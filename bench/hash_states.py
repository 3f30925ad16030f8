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




def feed_costs() -> None:
    """What ``--digest`` costs the event loop while a body streams: the loop thread's CPU per GiB of 64 KiB chunks
    through :class:`pytusd.core.digests.Running` (hashed behind, in a file I/O thread) against hashing each chunk
    on the loop as it passes, and the wall time of both."""
    import asyncio

    from pytusd.core.digests import Running
    from pytusd.hashstate import ResumableHash

    chunk = b"\x5a" * (64 << 10)
    count = (1 << 30) // len(chunk)

    async def body():
        for _ in range(count):
            yield chunk

    async def threaded() -> None:
        running = Running(0, [ResumableHash("sha256")])
        async for _ in running.feed(body()):
            pass
        await running.settle()

    async def inline() -> None:
        h = ResumableHash("sha256")
        async for c in body():
            h.update(c)

    for label, run in (("on the loop", inline), ("Running.feed (threads)", threaded)):
        wall, cpu = time.perf_counter(), time.thread_time()
        asyncio.run(run())
        print(f"1 GiB in 64 KiB chunks, {label:24s} loop CPU {time.thread_time() - cpu:5.2f} s, "
              f"wall {time.perf_counter() - wall:5.2f} s")


if __name__ == "__main__":
    main()
    feed_costs()
