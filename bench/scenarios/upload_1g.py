"""Scenario 1, upload-1g: one large upload to each server, in PATCHes of --patch-size and in one PATCH."""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.harness.client import RawHTTPClient, create_upload, patch_all
from bench.harness.context import Ctx, sha256_file
from bench.harness.errors import BenchError, ScenarioSkipped
from bench.harness.machine import prefault_memory, wait_for_quiet
from bench.harness.proc import machine_busy_seconds, memory_kib, proc_counters, steal_seconds
from bench.harness.report import skipped_notes, verdict
from bench.harness.servers import SERVERS, RunningServer, ServerSpec
from bench.harness.stats import new_over_old, rotate
from bench.harness.units import GiB, KiB, MB, MiB, fmt_size
from bench.scenarios.targets import TARGET_RATIO, TARGET_RAW_SINK, TARGET_TUSD_BIG


def measure_upload(
    ctx: Ctx, spec: ServerSpec, variant: str, patch_size: int, round_no: int, verify_sha: bool
) -> dict[str, Any]:
    """Start ``spec`` fresh on an empty directory, warm it up, upload ctx.data once, measure, verify, stop."""
    args = ctx.args
    size = len(ctx.data)
    tag = f"r{round_no}-{variant}-{spec.name}"
    upload_dir = os.path.join(ctx.work_dir, tag)
    os.makedirs(upload_dir)
    server = RunningServer(spec, upload_dir, os.path.join(ctx.work_dir, tag + ".log"), args.start_timeout)
    try:
        quiet = wait_for_quiet()  # before the keep-alive connection is opened: the server may close it when idle
        with RawHTTPClient("127.0.0.1", server.port, args.timeout) as client:
            if args.warmup_size:
                # First-request costs (imports, JIT, lazy set-up) are not what this measures.
                w = ctx.data[: min(args.warmup_size, size)]
                wtarget, _ = create_upload(client, spec.base_path, len(w))
                patch_all(client, wtarget, w, patch_size)
            rss_idle_kib, _ = memory_kib(server.pid)
            prefault_s = prefault_memory(args.prefault if args.prefault is not None else size + 512 * MiB)

            t0 = time.perf_counter()
            target, upload_id = create_upload(client, spec.base_path, size)
            post_s = time.perf_counter() - t0

            counters0 = proc_counters(server.pid)
            steal0, busy0 = steal_seconds(), machine_busy_seconds()
            client_cpu0 = time.process_time()
            t0 = time.perf_counter()
            requests = patch_all(client, target, ctx.data, patch_size)
            wall = time.perf_counter() - t0
            client_cpu = time.process_time() - client_cpu0
            steal, busy = steal_seconds() - steal0, machine_busy_seconds() - busy0
            counters = proc_counters(server.pid) - counters0
            cpu = counters.cpu_s
            rss_kib, hwm_kib = memory_kib(server.pid)

        stored = spec.stored_path(upload_dir, upload_id)
        try:
            stored_size = os.stat(stored).st_size
        except FileNotFoundError:
            raise BenchError(f"{spec.label}: stored file {stored} missing") from None
        if stored_size != size:
            raise BenchError(f"{spec.label}: stored file has {stored_size} bytes, expected {size}")
        sha_ok = None
        if verify_sha:
            sha_ok = sha256_file(stored) == ctx.data_sha256
            if not sha_ok:
                raise BenchError(f"{spec.label}: sha256 of {stored} differs from the bytes sent")
    finally:
        rc = server.stop()
        # Free the disk and the page cache it used (deleting drops dirty pages unwritten), then let writeback settle
        # so that the next server does not pay for this one's I/O.
        shutil.rmtree(upload_dir, ignore_errors=True)
        os.sync()
    if rc not in (0, -signal.SIGTERM):
        print(f"  note: {spec.label} exited with {rc} on SIGTERM; log {server.log_path}", file=sys.stderr)
    time.sleep(args.settle)
    return {
        "round": round_no,
        "variant": variant,
        "server": spec.name,
        "size": size,
        "patch_size": patch_size,
        "patch_requests": requests,
        "prefault_s": prefault_s,
        "post_s": post_s,
        "patch_wall_s": wall,
        "mb_per_s": size / wall / MB,
        "mib_per_s": size / wall / MiB,
        "server_cpu_s": cpu,
        "cpu_s_per_gib": cpu / (size / GiB),
        "server_user_s": counters.user_s,
        "server_sys_s": counters.sys_s,
        "server_minflt": counters.minflt,
        "server_majflt": counters.majflt,
        "steal_s": steal,
        "other_cores": max(0.0, busy - cpu - client_cpu) / wall,
        **quiet,
        "client_cpu_s": client_cpu,
        "rss_idle_mb": rss_idle_kib * KiB / MB,
        "rss_end_mb": rss_kib * KiB / MB,
        "peak_rss_mb": hwm_kib * KiB / MB,
        "stored_size_ok": True,
        "sha256_ok": sha_ok,
        "argv": server.argv,
    }


def measure_rounds(ctx: Ctx) -> dict[str, Any]:
    """One upload of --size bytes to each server per round: (a) POST + PATCHes of --patch-size, (b) POST + one
    PATCH of everything. Servers alternate which goes first."""
    args = ctx.args
    size = len(ctx.data)
    variants = {
        f"patch-{fmt_size(args.patch_size)}": args.patch_size,
        "patch-single": size,
    }
    chosen = [v for v in args.variants.split(",") if v] if args.variants else list(variants)
    aliases = {"chunked": next(iter(variants)), "a": next(iter(variants)), "single": "patch-single", "b": "patch-single"}
    chosen = [aliases.get(v, v) for v in chosen]
    for v in chosen:
        if v not in variants:
            raise BenchError(f"unknown variant {v!r}; choose from {', '.join(variants)} (or a/chunked, b/single)")
    specs = [SERVERS[s] for s in args.servers]
    if not specs:
        raise ScenarioSkipped("no server left to measure: " + "; ".join(skipped_notes(ctx, "servers")))

    results = []
    for r in range(1, args.rounds + 1):
        for i, variant in enumerate(chosen):
            # Who goes first changes from round to round within each variant. (A slot counted over the variants
            # fixed the order per variant whenever there were as many servers as variants: with two of each, the
            # same server went first in every round of a variant.)
            for spec in rotate(specs, r - 1 + i):
                res = measure_upload(ctx, spec, variant, variants[variant], r, verify_sha=(r == 1 and args.sha256))
                results.append(res)
                print(
                    f"  round {r}/{args.rounds} {variant:<14} {spec.label:<12} {res['mb_per_s']:8.0f} MB/s"
                    f"  cpu {res['server_cpu_s']:6.2f} s  peak rss {res['peak_rss_mb']:6.0f} MB"
                    f"  (usr {res['server_user_s']:.2f} sys {res['server_sys_s']:.2f}, {res['server_minflt']} minflt;"
                    f" client cpu {res['client_cpu_s']:.2f} s; others {res['other_cores']:.2f} cores;"
                    f" steal {res['steal_s']:.2f} s)",
                    flush=True,
                )
    return {"variants": {v: variants[v] for v in chosen}, "uploads": results}


def run(ctx: Ctx) -> dict[str, Any]:
    outcome = measure_rounds(ctx)
    summary = summarize(outcome["uploads"], ctx.args.servers, list(outcome["variants"]))
    verdicts = []
    for v, entry in summary.items():
        if "ratio_pytusd_over_tus_node" in entry:
            verdicts.append(verdict(f"1 {v}: pytusd / @tus/server MB/s", entry["ratio_pytusd_over_tus_node"],
                                    TARGET_RATIO))
        if "ratio_pytusd_over_tusd" in entry:
            verdicts.append(verdict(f"1 {v}: pytusd / tusd MB/s", entry["ratio_pytusd_over_tusd"], TARGET_TUSD_BIG))
        if "ratio_pytusd_over_rustus" in entry:
            verdicts.append(verdict(f"1 {v}: pytusd / rustus (--max-body-size 2GiB) MB/s",
                                    entry["ratio_pytusd_over_rustus"], TARGET_TUSD_BIG))
        if "ratio_pytusd_over_raw_sink" in entry:
            verdicts.append(verdict(f"1 {v}: pytusd / raw sink MB/s", entry["ratio_pytusd_over_raw_sink"],
                                    TARGET_RAW_SINK))
    ratios = []
    for v, entry in summary.items():
        ratios += new_over_old(entry["servers"], lambda e: e["mb_per_s"]["median"], f"{v} MB/s")
        ratios += new_over_old(entry["servers"], lambda e: e["cpu_s_per_gib"]["median"], f"{v} CPU-s/GiB")
    return {
        "title": f"Scenario 1: one {fmt_size(ctx.args.size)} upload, file store",
        "table": print_table(summary, ctx.args.rounds) + ratios + skipped_notes(ctx, "servers"),
        "summary": summary,
        "verdicts": verdicts,
        "variants": outcome["variants"],
        "uploads": outcome["uploads"],
    }


def summarize(uploads: list[dict[str, Any]], servers: Sequence[str], variants: Sequence[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    keys = (
        "mb_per_s",
        "server_cpu_s",
        "cpu_s_per_gib",
        "server_user_s",
        "server_sys_s",
        "server_minflt",
        "peak_rss_mb",
        "rss_idle_mb",
        "client_cpu_s",
        "steal_s",
        "patch_wall_s",
    )
    for v in variants:
        per: dict[str, Any] = {}
        for s in servers:
            rows = [u for u in uploads if u["variant"] == v and u["server"] == s]
            if not rows:
                continue
            entry: dict[str, Any] = {"n": len(rows)}
            for k in keys:
                vals = [row[k] for row in rows]
                entry[k] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
            per[s] = entry
        summary[v] = {"servers": per}
        if "pytusd" in per and "tus-node" in per:
            ratio = per["pytusd"]["mb_per_s"]["median"] / per["tus-node"]["mb_per_s"]["median"]
            summary[v]["ratio_pytusd_over_tus_node"] = ratio
            summary[v]["target_met"] = ratio >= TARGET_RATIO
        if "pytusd" in per and "tusd" in per:
            summary[v]["ratio_pytusd_over_tusd"] = (
                per["pytusd"]["mb_per_s"]["median"] / per["tusd"]["mb_per_s"]["median"]
            )
        if "pytusd" in per and "rustus-tuned" in per:
            summary[v]["ratio_pytusd_over_rustus"] = (
                per["pytusd"]["mb_per_s"]["median"] / per["rustus-tuned"]["mb_per_s"]["median"]
            )
        if "pytusd" in per and "raw-sink" in per:
            summary[v]["ratio_pytusd_over_raw_sink"] = (
                per["pytusd"]["mb_per_s"]["median"] / per["raw-sink"]["mb_per_s"]["median"]
            )
    return summary


def print_table(summary: dict[str, Any], rounds: int) -> list[str]:
    out = [
        "| variant | server | MB/s median (min-max) | server CPU-s | CPU-s/GiB (usr+sys) | minor faults"
        " | peak RSS MB (idle) | client CPU-s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v, entry in summary.items():
        for s, e in entry["servers"].items():
            med = {k: e[k]["median"] for k in e if k != "n"}
            out.append(
                f"| {v} | {SERVERS[s].label}"
                f" | {med['mb_per_s']:.0f} ({e['mb_per_s']['min']:.0f}-{e['mb_per_s']['max']:.0f})"
                f" | {med['server_cpu_s']:.2f}"
                f" | {med['cpu_s_per_gib']:.2f} ({med['server_user_s']:.2f}+{med['server_sys_s']:.2f})"
                f" | {med['server_minflt']:.0f}"
                f" | {med['peak_rss_mb']:.0f} ({med['rss_idle_mb']:.0f})"
                f" | {med['client_cpu_s']:.2f} |"
            )
    out.append("")
    out.append(
        f"medians of {rounds} round(s); MB = 10^6 bytes; MB/s = bytes / wall time of the PATCH phase;"
        " CPU, faults: server process during the PATCH phase (usr+sys in s)"
    )
    return out


