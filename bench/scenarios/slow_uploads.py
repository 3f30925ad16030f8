"""Scenario 3, slow-uploads: many uploads held open at once, each sending a little every second: RSS and failures."""

from __future__ import annotations

import os
from typing import Any

from bench.harness import loadclient
from bench.harness.context import Ctx
from bench.harness.errors import ScenarioSkipped
from bench.harness.machine import wait_for_quiet
from bench.harness.proc import fd_count, memory_kib, proc_counters
from bench.harness.report import skipped_notes, verdict
from bench.harness.servers import SERVERS, ServerSpec, finish_server, fresh_server
from bench.harness.stats import median_of, new_over_old, rotate
from bench.harness.units import KiB, MB, fmt_size
from bench.scenarios.targets import TARGET_SLOW_RSS_MB, TARGET_TUSD_SLOW_RSS


def measure_slow(ctx: Ctx, spec: ServerSpec, round_no: int) -> dict[str, Any]:
    args = ctx.args
    server = fresh_server(ctx, spec, f"s3-r{round_no}-{spec.name}")
    try:
        rss_idle_kib, _ = memory_kib(server.pid)
        quiet = wait_for_quiet()
        cpu0 = proc_counters(server.pid)

        def on_held() -> dict[str, Any]:
            rss, hwm = memory_kib(server.pid)
            return {"rss_held_mb": rss * KiB / MB, "hwm_held_mb": hwm * KiB / MB, "fds_held": fd_count(server.pid)}

        res = loadclient.slow_uploads(
            server.port, spec.base_path, args.slow_uploads, args.slow_chunk, args.slow_chunks, args.slow_interval,
            args.slow_ramp, on_held,
        )
        cpu = proc_counters(server.pid) - cpu0
        _, hwm_kib = memory_kib(server.pid)
        complete = sum(
            1 for e in os.scandir(server.upload_dir) if e.is_file() and e.stat().st_size == res["upload_size"]
        )
    finally:
        finish_server(ctx, server)
    return {
        "round": round_no,
        "server": spec.name,
        **res,
        "stored_complete": complete,
        "rss_idle_mb": rss_idle_kib * KiB / MB,
        "peak_rss_mb": hwm_kib * KiB / MB,
        "per_upload_kib": (res.get("rss_held_mb", float("nan")) - rss_idle_kib * KiB / MB) * MB / KiB
        / args.slow_uploads,
        "server_cpu_s": cpu.cpu_s,
        **quiet,
        "argv": server.argv,
    }


def run(ctx: Ctx) -> dict[str, Any]:
    args = ctx.args
    loadclient.raise_nofile(4 * args.slow_uploads + 1024)  # the servers inherit it
    specs = [SERVERS[s] for s in args.slow_servers]
    if not specs:
        raise ScenarioSkipped("no server left to measure: " + "; ".join(skipped_notes(ctx, "slow_servers")))
    rows = []
    for r in range(1, args.rounds + 1):
        for spec in rotate(specs, r - 1):
            res = measure_slow(ctx, spec, r)
            rows.append(res)
            print(
                f"  round {r}/{args.rounds} {spec.label:<12} ok {res['ok']}/{res['uploads']}  errors {res['errors']}"
                f"  rss held {res.get('rss_held_mb', float('nan')):.0f} MB  peak rss {res['peak_rss_mb']:.0f} MB"
                f"  (idle {res['rss_idle_mb']:.0f})  fds {res.get('fds_held', 0)}  cpu {res['server_cpu_s']:.1f} s",
                flush=True,
            )
            if res["error_samples"]:
                print("    errors: " + "; ".join(res["error_samples"][:3]), flush=True)
    out = [
        "| server | uploads ok / errors | peak RSS MB (VmHWM) | RSS with all open MB | idle RSS MB | KiB per open upload"
        " | fds with all open | server CPU-s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {}
    for spec in specs:
        mine = [x for x in rows if x["server"] == spec.name]
        entry = {k: median_of(mine, k) for k in ("peak_rss_mb", "rss_held_mb", "rss_idle_mb", "per_upload_kib",
                                                 "fds_held", "server_cpu_s")}
        entry["ok"] = sum(x["ok"] for x in mine)
        entry["errors"] = sum(x["errors"] for x in mine)
        entry["uploads"] = sum(x["uploads"] for x in mine)
        entry["peak_rss_max_mb"] = max(x["peak_rss_mb"] for x in mine)
        summary[spec.name] = entry
        out.append(
            f"| {spec.label} | {entry['ok']} / {entry['errors']} | {entry['peak_rss_mb']:.0f}"
            f" (max {entry['peak_rss_max_mb']:.0f}) | {entry['rss_held_mb']:.0f} | {entry['rss_idle_mb']:.0f}"
            f" | {entry['per_upload_kib']:.0f} | {entry['fds_held']:.0f} | {entry['server_cpu_s']:.1f} |"
        )
    out += ["", (
        f"{args.slow_uploads} uploads opened over {args.slow_ramp:g} s, each a PATCH sending {fmt_size(args.slow_chunk)}"
        f" every {args.slow_interval:g} s, {args.slow_chunks} times; RSS with all open = sampled once every upload was"
        f" open; medians of {args.rounds} round(s), ok/errors summed.")]
    out += new_over_old(summary, lambda e: e["peak_rss_max_mb"], "peak RSS (max)", " MB")
    out += new_over_old(summary, lambda e: e["server_cpu_s"], "server CPU-s", " s")
    out += skipped_notes(ctx, "slow_servers")
    if "pytusd" not in summary:
        return {"title": f"Scenario 3: {args.slow_uploads} slow uploads held open", "table": out,
                "summary": summary, "verdicts": [], "runs": rows}
    p = summary["pytusd"]
    verdicts = [
        verdict(f"3: pytusd peak RSS with {args.slow_uploads:,} open uploads", p["peak_rss_max_mb"], TARGET_SLOW_RSS_MB,
                higher_is_better=False, unit="MB"),
        {"what": "3: pytusd failed requests", "value": p["errors"], "target": 0, "unit": "",
         "higher_is_better": False, "met": p["errors"] == 0 and p["ok"] == p["uploads"]},
    ]
    # Issue 17: no more memory than the compiled peers (the max over rounds of each, as above).
    for peer in ("tusd", "rustus"):
        if peer in summary:
            verdicts.append(verdict(f"3: pytusd / {peer} peak RSS with {args.slow_uploads:,} open uploads",
                                    p["peak_rss_max_mb"] / summary[peer]["peak_rss_max_mb"], TARGET_TUSD_SLOW_RSS,
                                    higher_is_better=False, or_equal=True))
    return {
        "title": f"Scenario 3: {args.slow_uploads} slow uploads held open",
        "table": out,
        "summary": summary,
        "verdicts": verdicts,
        "runs": rows,
    }

