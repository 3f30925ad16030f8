"""Sizes: the binary and decimal units, and the size arguments of the command line ('64MiB', '1GiB')."""

from __future__ import annotations

import argparse
import re


KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1_000_000


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'1GiB', '64MiB', '16M', '1048576' -> bytes (K/M/G/T are binary, KB/MB/GB with no 'i' are decimal)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 64MiB, 1GiB, 1048576)")
    number, unit, binary = m.groups()
    unit = unit.lower()
    plain = text.strip().lower()
    # "16M" and "16MiB" are binary; "16MB" is decimal.
    decimal = bool(unit) and not binary and plain.endswith("b")
    base = 1000 if decimal else 1024
    power = " kmgt".index(unit) if unit else 0
    value = int(float(number) * base**power)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def fmt_size(n: int) -> str:
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"
