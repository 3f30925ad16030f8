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


def verdict(what: str, value: float, target: float, higher_is_better: bool = True, unit: str = "x",
            or_equal: bool = False) -> dict[str, Any]:
    """``value`` against ``target``: >= when higher is better, else < (<= with ``or_equal``: "no worse than")."""
    if higher_is_better:
        ok = value >= target
    else:
        ok = value <= target if or_equal else value < target
    return {"what": what, "value": value, "target": target, "unit": unit,
            "higher_is_better": higher_is_better, "or_equal": or_equal, "met": bool(ok)}


def shortfall(v: dict[str, Any]) -> str:
    """How far a missed target is: ' by 12% (needs 1.14x)', relative to the value ('' when met or not a number)."""
    value, target = v["value"], v["target"]
    if v["met"] or v["unit"] == "" or not value or value != value or not target:
        return ""
    if v["higher_is_better"]:
        return f" by {(1 - value / target) * 100:.0f}% (needs {target / value:.2f}x)"
    return f" by {(value / target - 1) * 100:.0f}% (needs {target / value:.2f}x)"


def format_verdict(v: dict[str, Any]) -> str:
    if v["unit"] == "":
        return f"{v['what']} = **{v['value']}** -> {'PASS' if v['met'] else 'MISS'} (target {v['target']})"
    op = ">=" if v["higher_is_better"] else ("<=" if v.get("or_equal") else "<")
    value = f"{v['value']:.2f}{v['unit']}" if v["unit"] == "x" else f"{v['value']:.0f} {v['unit']}"
    target = f"{v['target']:g}{v['unit']}" if v["unit"] == "x" else f"{v['target']:g} {v['unit']}"
    return f"{v['what']} = **{value}** -> {'PASS' if v['met'] else 'MISS' + shortfall(v)} (target {op} {target})"


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
