"""The scenarios, one module each, and their registry: number, name, help text, run time and entry point.

A scenario is a function ``run(ctx: Ctx) -> dict`` returning ``{"title", "table": [lines], "summary", "verdicts":
[verdict(...)], ...}``; it may raise ScenarioSkipped (cannot run here) or BenchError (broke)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from bench.harness.context import Ctx
from bench.scenarios import s3, slow_uploads, small_uploads, upload_1g, workers


@dataclasses.dataclass(frozen=True)
class Scenario:
    number: int
    name: str
    help: str
    run: Callable[[Ctx], dict[str, Any]]
    minutes: str  # with the default options, on the 2-vCPU reference machine


SCENARIOS: dict[int, Scenario] = {
    s.number: s
    for s in (
        Scenario(1, "upload-1g", "one 1 GiB upload (POST + 16 MiB PATCHes; POST + one PATCH): pytusd vs tusd"
                 " vs rustus vs @tus/server vs the raw sink", upload_1g.run, "~2"),
        Scenario(2, "small-uploads", "200 concurrent clients, each creating 256 KiB uploads with the body in the POST:"
                 " req/s, p50/p99; then HEAD of an existing upload under the same load", small_uploads.run, "~2.5"),
        Scenario(3, "slow-uploads", "1,000 slow uploads held open: RSS and failures, pytusd vs tusd vs rustus vs"
                 " @tus/server", slow_uploads.run, "~4"),
        Scenario(4, "s3", "one 1 GiB upload into Ceph RGW through pytusd vs tusd's S3 store vs boto3's upload_file",
                 s3.run, "~3"),
        Scenario(5, "workers", "--workers N vs --workers 1 (file locker), against tusd on every core and on one:"
                 " parallel large uploads and scenario 2's load", workers.run, "~2.5"),
    )
}
SCENARIO_NAMES = {s.name: s.number for s in SCENARIOS.values()}
