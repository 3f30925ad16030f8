"""Scenario 2, small-uploads: many clients creating small uploads with the body in the POST (creation-with-upload).

Its load (measure_small) is scenario 5's small-request load as well."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from bench.harness import loadclient
from bench.harness.context import Ctx
from bench.harness.errors import BenchError, ScenarioSkipped
from bench.harness.machine import fs_of, wait_for_quiet
from bench.harness.proc import ProcCounters, machine_busy_seconds, memory_kib, proc_counters, steal_seconds, worker_pids
from bench.harness.report import skipped_notes, verdict
from bench.harness.servers import SERVERS, ServerSpec, finish_server, fresh_server
from bench.harness.stats import median_of, new_over_old, rotate
from bench.harness.units import KiB, MB, fmt_size
from bench.scenarios.targets import TARGET_SMALL_RATIO, TARGET_TUSD_HEAD, TARGET_TUSD_P99, TARGET_TUSD_SMALL


def measure_small(ctx: Ctx, spec: ServerSpec, round_no: int, tag: str, head_mode: bool = False) -> dict[str, Any]:
    """``--clients`` connections, each POSTing ``--body-size`` uploads with their body (creation-with-upload) one
    after the other for ``--duration`` seconds after a ``--warmup`` of the same; ``head_mode``: each creates one
    such upload and then sends HEAD requests for it (the HEAD load)."""
    args = ctx.args
    body = ctx.random(args.body_size)
    server = fresh_server(ctx, spec, tag, ctx.small_dir)
    try:
        rss_idle_kib, _ = memory_kib(server.pid)
        snaps: dict[str, tuple[ProcCounters, float, dict[int, float]]] = {}

        def on_window(which: str) -> None:
            per_worker = {p: proc_counters(p).cpu_s for p in worker_pids(server.pid)}
            snaps[which] = (proc_counters(server.pid), steal_seconds(), per_worker, machine_busy_seconds())

        quiet = wait_for_quiet()

        res = loadclient.creation_with_upload_load(
            server.port, spec.base_path, args.clients, body, args.warmup, args.duration, on_window, head_mode
        )
        counters = snaps["end"][0] - snaps["start"][0]
        steal = snaps["end"][1] - snaps["start"][1]
        busy = snaps["end"][3] - snaps["start"][3]
        _, hwm_kib = memory_kib(server.pid)
        per_worker_cpu = [snaps["end"][2].get(p, 0.0) - c for p, c in snaps["start"][2].items()]
        # Every upload the server acknowledged must be on disk, complete.
        full = sum(
            1 for e in os.scandir(server.upload_dir) if e.is_file() and e.stat().st_size == len(body)
        )
    finally:
        finish_server(ctx, server)
    acknowledged = res["created"]
    if full < acknowledged:
        raise BenchError(f"{spec.label}: {acknowledged} uploads acknowledged, only {full} stored complete")
    window = res["window_s"]
    return {
        "round": round_no,
        "server": spec.name,
        **res,
        "stored_complete": full,
        "server_cpu_s": counters.cpu_s,
        "server_user_s": counters.user_s,
        "server_sys_s": counters.sys_s,
        "server_cores": counters.cpu_s / window,
        "client_cores": res["client_cpu_s"] / window,
        "server_cpu_ms_per_req": counters.cpu_s / max(1, res["requests"]) * 1000,
        "client_cpu_ms_per_req": res["client_cpu_s"] / max(1, res["requests"]) * 1000,
        "worker_cpu_s": per_worker_cpu,
        "steal_s": steal,
        "other_cores": max(0.0, busy - counters.cpu_s - res["client_cpu_s"]) / window,
        **quiet,
        "peak_rss_mb": hwm_kib * KiB / MB,
        "rss_idle_mb": rss_idle_kib * KiB / MB,
        "argv": server.argv,
    }


def print_small_row(r: int, rounds: int, label: str, res: dict[str, Any]) -> None:
    print(
        f"  round {r}/{rounds} {label:<18} {res['req_per_s']:7.0f} req/s  p50 {res['p50_ms']:6.1f} ms"
        f"  p99 {res['p99_ms']:7.1f} ms  errors {res['errors']}  server {res['server_cores']:.2f} cores"
        f"  client {res['client_cores']:.2f} cores  others {res['other_cores']:.2f} cores  steal {res['steal_s']:.2f} s",
        flush=True,
    )


def small_table(
    rows: list[dict[str, Any]], specs: Sequence[ServerSpec], bodyless: bool = False
) -> tuple[list[str], dict[str, Any]]:
    out = [
        "| server | req/s median (min-max) | MB/s | p50 ms | p99 ms | errors | server cores | server CPU ms/req"
        " | client cores | client CPU ms/req | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {}
    for spec in specs:
        mine = [x for x in rows if x["server"] == spec.name]
        if not mine:
            continue
        rps = [x["req_per_s"] for x in mine]
        entry = {k: median_of(mine, k) for k in (
            "req_per_s", "mb_per_s", "p50_ms", "p90_ms", "p99_ms", "server_cores", "server_cpu_ms_per_req",
            "client_cores", "client_cpu_ms_per_req", "peak_rss_mb")}
        entry["errors"] = sum(x["errors"] for x in mine)
        entry["n"] = len(mine)
        summary[spec.name] = entry
        out.append(
            f"| {spec.label} | {entry['req_per_s']:.0f} ({min(rps):.0f}-{max(rps):.0f})"
            f" | {'-' if bodyless else format(entry['mb_per_s'], '.0f')}"
            f" | {entry['p50_ms']:.1f} | {entry['p99_ms']:.1f} | {entry['errors']} | {entry['server_cores']:.2f}"
            f" | {entry['server_cpu_ms_per_req']:.2f} | {entry['client_cores']:.2f}"
            f" | {entry['client_cpu_ms_per_req']:.2f} | {entry['peak_rss_mb']:.0f} |"
        )
    return out, summary


def peer_verdicts(prefix: str, summary: dict[str, Any], unit: str, target: float) -> list[dict[str, Any]]:
    """pytusd against tusd and rustus (whichever were measured): the rate against ``target``, p99 no worse."""
    out = []
    for peer in ("tusd", "rustus"):
        if "pytusd" in summary and peer in summary:
            p, t = summary["pytusd"], summary[peer]
            out += [
                verdict(f"{prefix}: pytusd / {peer} {unit}", p["req_per_s"] / t["req_per_s"], target),
                verdict(f"{prefix}: pytusd p99 / {peer} p99", p["p99_ms"] / t["p99_ms"], TARGET_TUSD_P99,
                        higher_is_better=False, or_equal=True),
            ]
    return out


def run(ctx: Ctx) -> dict[str, Any]:
    args = ctx.args
    specs = [SERVERS[s] for s in args.small_servers]
    if not specs:
        raise ScenarioSkipped("no server left to measure: " + "; ".join(skipped_notes(ctx, "small_servers")))
    rows = []
    for r in range(1, args.rounds + 1):
        for spec in rotate(specs, r - 1):
            res = measure_small(ctx, spec, r, f"s2-r{r}-{spec.name}")
            rows.append(res)
            print_small_row(r, args.rounds, spec.label, res)
    table, summary = small_table(rows, specs)
    verdicts = []
    notes = [
        f"{args.clients} clients x {fmt_size(args.body_size)} per POST (creation-with-upload), {args.duration:g} s"
        f" measured after {args.warmup:g} s warm-up, medians of {args.rounds} round(s); latency = request's first"
        f" byte sent to its 201 received; errors summed over rounds; upload dirs on {fs_of(ctx.small_dir)}.",
    ]
    if "pytusd" in summary and "tus-node" in summary:
        p, t = summary["pytusd"], summary["tus-node"]
        ratio = p["req_per_s"] / t["req_per_s"]
        verdicts = [
            verdict("2: pytusd / @tus/server req/s", ratio, TARGET_SMALL_RATIO),
            verdict("2: pytusd p99 / @tus/server p99", p["p99_ms"] / t["p99_ms"], 1.0, higher_is_better=False),
        ]
    verdicts += peer_verdicts("2", summary, "req/s", TARGET_TUSD_SMALL)
    notes += new_over_old(summary, lambda e: e["req_per_s"], "req/s")
    notes += new_over_old(summary, lambda e: e["p99_ms"], "p99", " ms")
    notes += new_over_old(summary, lambda e: e["server_cpu_ms_per_req"], "server CPU per request", " ms")
    notes += skipped_notes(ctx, "small_servers")
    if "pytusd" in summary and "raw-sink" in summary:
        p = summary["pytusd"]
        notes.append(
            f"client ceiling: the same client against the raw sink reached {summary['raw-sink']['req_per_s']:.0f}"
            f" req/s ({summary['raw-sink']['req_per_s'] / p['req_per_s']:.1f}x pytusd's rate); the client costs"
            f" {p['client_cpu_ms_per_req']:.2f} ms CPU per request against pytusd's"
            f" {p['server_cpu_ms_per_req']:.2f} ms."
        )
    head_table: list[str] = []
    head_summary: dict[str, Any] = {}
    head_rows: list[dict[str, Any]] = []
    head_specs = [SERVERS[s] for s in args.head_servers]
    if head_specs:
        for r in range(1, args.rounds + 1):
            for spec in rotate(head_specs, r - 1):
                res = measure_small(ctx, spec, r, f"s2h-r{r}-{spec.name}", head_mode=True)
                head_rows.append(res)
                print_small_row(r, args.rounds, f"{spec.label} HEAD", res)
        head_table, head_summary = small_table(head_rows, head_specs, bodyless=True)
        head_table = ["", f"HEAD of an existing upload: each of the {args.clients} clients creates one upload as"
                      " above, then sends HEAD requests for it one after the other (200 with the full Upload-Offset);"
                      " only the HEADs are counted.", ""] + head_table
        verdicts += peer_verdicts("2 HEAD", head_summary, "req/s", TARGET_TUSD_HEAD)
        notes += skipped_notes(ctx, "head_servers")
    return {
        "title": f"Scenario 2: {args.clients} concurrent clients, {fmt_size(args.body_size)} creation-with-upload",
        "table": table + head_table + [""] + notes,
        "head_summary": head_summary,
        "head_runs": head_rows,
        "summary": summary,
        "verdicts": verdicts,
        "runs": rows,
    }

