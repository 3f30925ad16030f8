"""What every scenario gets: the options, the work directories, and the random bytes it uploads (made once)."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import time

from bench.harness.units import MiB, fmt_size


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


@dataclasses.dataclass
class Ctx:
    args: argparse.Namespace
    work_dir: str
    small_dir: str = ""  # upload dirs of the many-small-uploads loads (scenarios 2 and 5), see --small-work-dir
    _random: memoryview | None = None
    _sha: dict[int, str] = dataclasses.field(default_factory=dict)

    def random(self, size: int) -> memoryview:
        """``size`` random bytes (a prefix of one buffer made once, at the largest size asked for)."""
        if self._random is None or len(self._random) < size:
            t0 = time.perf_counter()
            self._random = memoryview(os.urandom(size))
            self._sha.clear()
            print(f"  {fmt_size(size)} of random bytes ready in {time.perf_counter() - t0:.1f} s", flush=True)
        return self._random[:size]

    def sha256(self, size: int) -> str:
        if size not in self._sha:
            self._sha[size] = hashlib.sha256(self.random(size)).hexdigest()
        return self._sha[size]

    @property
    def data(self) -> memoryview:
        """Scenario 1's upload: --size bytes."""
        return self.random(self.args.size)

    @property
    def data_sha256(self) -> str:
        return self.sha256(self.args.size)
