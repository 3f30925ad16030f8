"""Order and medians: who goes first in a round, the median of a figure, new install over old."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any


def rotate(items: Sequence[Any], slot: int) -> list[Any]:
    """``items`` starting at position ``slot`` (mod len): who goes first changes every time."""
    k = slot % len(items)
    return list(items[k:]) + list(items[:k])


def median_of(rows: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")


def new_over_old(summary: dict[str, Any], key: Callable[[Any], float], what: str, unit: str = "") -> list[str]:
    """A line 'pytusd / pytusd (baseline) <what>' when both were measured (``key`` picks the figure)."""
    if "pytusd" not in summary or "pytusd-baseline" not in summary:
        return []
    new, old = key(summary["pytusd"]), key(summary["pytusd-baseline"])
    ratio = new / old if old else float("nan")
    return [f"pytusd / pytusd (baseline) {what}: {ratio:.2f}x ({new:.2f} / {old:.2f}{unit})"]
