"""The report: verdicts against the targets, the servers left out, a scenario's table and verdicts as printed, and
the JSON of a whole run in bench/results."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from typing import Any

from bench.harness.context import Ctx
from bench.harness.paths import RESULTS_DIR
from bench.harness.servers import SERVERS


def verdict(what: str, value: float, target: float, higher_is_better: bool = True, unit: str = "x") -> dict[str, Any]:
    ok = value >= target if higher_is_better else value < target
    return {"what": what, "value": value, "target": target, "unit": unit,
            "higher_is_better": higher_is_better, "met": bool(ok)}


def format_verdict(v: dict[str, Any]) -> str:
    if v["unit"] == "":
        return f"{v['what']} = **{v['value']}** -> {'PASS' if v['met'] else 'MISS'} (target {v['target']})"
    op = ">=" if v["higher_is_better"] else "<"
    value = f"{v['value']:.2f}{v['unit']}" if v["unit"] == "x" else f"{v['value']:.0f} {v['unit']}"
    target = f"{v['target']:g}{v['unit']}" if v["unit"] == "x" else f"{v['target']:g} {v['unit']}"
    return f"{v['what']} = **{value}** -> {'PASS' if v['met'] else 'MISS'} (target {op} {target})"


def skipped_notes(ctx: Ctx, key: str) -> list[str]:
    """A line per server of ``--servers`` or ``--small-servers`` (``key``) left out because it is not installed."""
    lines = [f"{SERVERS[n].label} skipped: {why}" for n, why in ctx.args.skipped[key].items()]
    for line in lines:
        print(f"  {line}", flush=True)
    return lines


def report_scenario(number: int, result: dict[str, Any]) -> list[str]:
    lines = [f"### {result['title']}", ""] + result["table"] + [""]
    lines += [f"- {format_verdict(v)}" for v in result["verdicts"]]
    print()
    print("\n".join(lines), flush=True)
    return lines


def write_json(
    results: dict[str, Any], started: dt.datetime, args: argparse.Namespace, machine: dict[str, Any],
    verdicts: list[dict[str, Any]], report: list[str],
) -> str:
    """Everything of a run - every measurement, the tables, the machine, the options - as
    bench/results/<UTC start>.json; returns its path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(RESULTS_DIR, f"{stamp}.json")
    payload = {
        "scenarios": results,
        "started_utc": started.isoformat(timespec="seconds"),
        "seconds": (dt.datetime.now(dt.timezone.utc) - started).total_seconds(),
        "rounds": args.rounds,
        "quick": args.quick,
        "options": {k: v for k, v in vars(args).items() if k not in ("list",)},
        "machine": machine,
        "verdicts": verdicts,
        "report": report,
    }
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)
        f.write("\n")
    return path
