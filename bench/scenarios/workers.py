"""Scenario 5, workers: pytusd --workers N against --workers 1, and both against tusd on as many cores (its default
and GOMAXPROCS=1), with parallel large uploads and scenario 2's load."""

from __future__ import annotations

import concurrent.futures
import os
import time
from typing import Any

from bench.harness.client import RawHTTPClient, create_upload, patch_all
from bench.harness.context import Ctx
from bench.harness.errors import BenchError, ScenarioSkipped
from bench.harness.machine import prefault_memory, wait_for_quiet
from bench.harness.proc import (
    connections_by_worker,
    machine_busy_seconds,
    memory_kib,
    proc_counters,
    steal_seconds,
    worker_pids,
)
from bench.harness.report import skipped_notes, verdict
from bench.harness.servers import SERVERS, ServerSpec, finish_server, fresh_server, pytusd_spec
from bench.harness.stats import median_of, new_over_old, rotate
from bench.harness.units import GiB, KiB, MB, MiB, fmt_size
from bench.scenarios.small_uploads import measure_small, print_small_row
from bench.scenarios.targets import TARGET_SCALING, TARGET_TUSD_WORKERS


def measure_parallel_uploads(ctx: Ctx, spec: ServerSpec, round_no: int, tag: str) -> dict[str, Any]:
    """``--parallel-uploads`` uploads at once, each its own keep-alive connection (a thread with the raw-socket
    client): POST + PATCHes of --patch-size; together --parallel-size bytes."""
    args = ctx.args
    n = args.parallel_uploads
    each = args.parallel_size // n
    data = ctx.random(each)
    server = fresh_server(ctx, spec, tag)
    try:
        quiet = wait_for_quiet()
        clients = [RawHTTPClient("127.0.0.1", server.port, args.timeout) for _ in range(n)]
        try:
            with concurrent.futures.ThreadPoolExecutor(n) as pool:
                # Warm-up: every connection once (so every worker has served), 4 MiB each.
                w = data[: 4 * MiB]
                list(pool.map(lambda c: patch_all(c, create_upload(c, spec.base_path, len(w))[0], w, len(w)), clients))
                targets = list(pool.map(lambda c: create_upload(c, spec.base_path, each)[0], clients))
                workers = worker_pids(server.pid)
                owners = connections_by_worker(server.port, workers) if workers else {}
                prefault_memory(args.parallel_size + 512 * MiB)
                counters0, steal0, c0 = proc_counters(server.pid), steal_seconds(), time.process_time()
                busy0 = machine_busy_seconds()
                per0 = {p: proc_counters(p).cpu_s for p in workers}
                t0 = time.perf_counter()
                list(pool.map(lambda ct: patch_all(ct[0], ct[1], data, args.patch_size), zip(clients, targets)))
                wall = time.perf_counter() - t0
                counters = proc_counters(server.pid) - counters0
                client_cpu, steal = time.process_time() - c0, steal_seconds() - steal0
                busy = machine_busy_seconds() - busy0
                per_worker = [proc_counters(p).cpu_s - c for p, c in per0.items()]
        finally:
            for c in clients:
                c.close()
        _, hwm = memory_kib(server.pid)
        stored = [e.stat().st_size for e in os.scandir(server.upload_dir) if e.is_file() and "." not in e.name]
        if sum(1 for s in stored if s == each) < n:
            raise BenchError(f"{spec.label}: fewer than {n} complete uploads stored")
    finally:
        finish_server(ctx, server)
    return {
        "round": round_no,
        "server": spec.name,
        "mb_per_s": n * each / wall / MB,
        "wall_s": wall,
        "server_cpu_s": counters.cpu_s,
        "server_cores": counters.cpu_s / wall,
        "client_cores": client_cpu / wall,
        "cpu_s_per_gib": counters.cpu_s / (n * each / GiB),
        "connections_per_worker": sorted((len(v) for v in owners.values()), reverse=True),
        "worker_cpu_s": per_worker,
        "steal_s": steal,
        "other_cores": max(0.0, busy - counters.cpu_s - client_cpu) / wall,
        **quiet,
        "peak_rss_mb": hwm * KiB / MB,
        "argv": server.argv,
    }


def run(ctx: Ctx) -> dict[str, Any]:
    args = ctx.args
    cores = os.cpu_count() or 1
    counts = sorted({1, min(args.max_workers or cores, cores)})
    # --workers-servers: the installs compared (pytusd, pytusd-baseline), each with every count of workers;
    # this checkout's pytusd keeps the names workers-N (and its summary the keys N).
    # tusd: GOMAXPROCS=1 beside one worker, its default (every core) beside N workers (bench/README.md).
    runs = [(base, n, (SERVERS["tusd-1cpu"] if n == 1 else SERVERS["tusd"]) if base == "tusd" else
             pytusd_spec(f"workers-{n}" if base == "pytusd" else f"{base}-workers-{n}",
                         f"{SERVERS[base].label} --workers {n}", "--workers", str(n), base=base))
            for base in args.workers_servers for n in counts]
    specs = [spec for _, _, spec in runs]
    if not specs:
        raise ScenarioSkipped("no server left to measure: " + "; ".join(skipped_notes(ctx, "workers_servers")))
    rows_big: list[dict[str, Any]] = []
    rows_small: list[dict[str, Any]] = []
    for r in range(1, args.rounds + 1):
        for spec in rotate(specs, r - 1):
            res = measure_parallel_uploads(ctx, spec, r, f"s5-r{r}-{spec.name}-big")
            rows_big.append(res)
            print(
                f"  round {r}/{args.rounds} {spec.label:<18} {args.parallel_uploads} uploads {res['mb_per_s']:7.0f} MB/s"
                f"  server {res['server_cores']:.2f} cores  client {res['client_cores']:.2f} cores"
                f"  connections per worker {res['connections_per_worker']}  others {res['other_cores']:.2f} cores"
                f"  steal {res['steal_s']:.2f} s",
                flush=True,
            )
        for spec in rotate(specs, r):
            res = measure_small(ctx, spec, r, f"s5-r{r}-{spec.name}-small")
            rows_small.append(res)
            print_small_row(r, args.rounds, spec.label, res)
    out = [
        "| load | workers | throughput median (min-max) | vs 1 worker | CPU ceiling | server cores | client cores"
        " | server CPU per unit | connections per worker |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {"big": {}, "small": {}}
    verdicts = []
    ratios: list[str] = []
    for load, rows, key, unit, cpu_key in (
        ("big", rows_big, "mb_per_s", "MB/s", "cpu_s_per_gib"),
        ("small", rows_small, "req_per_s", "req/s", "server_cpu_ms_per_req"),
    ):
        base: dict[str, float] = {}
        by_install: dict[int, dict[str, Any]] = {}
        for install, n, spec in runs:
            mine = [x for x in rows if x["server"] == spec.name]
            vals = [x[key] for x in mine]
            entry = {k: median_of(mine, k) for k in (key, "server_cores", "client_cores", cpu_key)}
            if n == counts[0]:
                base = entry
            entry["speedup"] = entry[key] / base[key]
            # What the machine allows: one worker's throughput used server + client CPU; all cores give at most
            # cores / (that CPU) times as much, and N workers at most N times as much.
            entry["cpu_ceiling"] = min(n, cores / (base["server_cores"] + base["client_cores"]))
            summary[load][n if install == "pytusd" else f"{install} {n}"] = entry
            by_install.setdefault(n, {})[install] = entry
            spread = ""
            if load == "big" and n > 1:
                spread = "; ".join("/".join(map(str, x["connections_per_worker"])) for x in mine)
            cpu_unit = "CPU-s/GiB" if load == "big" else "CPU ms/req"
            what = (f"{args.parallel_uploads} x {fmt_size(args.parallel_size // args.parallel_uploads)} uploads"
                    if load == "big" else f"{args.clients} clients x {fmt_size(args.body_size)} POST")
            who = "" if args.workers_servers == ["pytusd"] else f" ({spec.label})"
            out.append(
                f"| {what} | {n}{who} | {entry[key]:.0f} {unit} ({min(vals):.0f}-{max(vals):.0f}) | {entry['speedup']:.2f}x"
                f" | {entry['cpu_ceiling']:.2f}x | {entry['server_cores']:.2f} | {entry['client_cores']:.2f}"
                f" | {entry[cpu_key]:.2f} {cpu_unit}"
                f" | {spread or '-'} |"
            )
            if n > 1 and install == "pytusd":
                verdicts.append(verdict(f"5 {load}: --workers {n} / --workers 1 {unit} (/{n})", entry["speedup"] / n,
                                        TARGET_SCALING))
                verdicts.append(verdict(f"5 {load}: speed-up / this machine's CPU ceiling ({entry['cpu_ceiling']:.2f}x)",
                                        entry["speedup"] / entry["cpu_ceiling"], TARGET_SCALING))
        for n in counts:
            if "pytusd" in by_install[n] and "tusd" in by_install[n]:
                peer = "tusd GOMAXPROCS=1" if n == 1 else "tusd (default, every core)"
                verdicts.append(verdict(f"5 {load}: pytusd --workers {n} / {peer} {unit}",
                                        by_install[n]["pytusd"][key] / by_install[n]["tusd"][key], TARGET_TUSD_WORKERS))
            ratios += new_over_old(by_install[n], lambda e, k=key: e[k], f"{load} --workers {n} {unit}")
            ratios += new_over_old(by_install[n], lambda e, k=cpu_key: e[k],
                                   f"{load} --workers {n} {'CPU-s/GiB' if load == 'big' else 'CPU ms/req'}")
    out += ["", (
        f"{cores} cores shared by the server and the bench client; file store, file locker. 'big': "
        f"{args.parallel_uploads} uploads at once (one keep-alive connection each, PATCHes of"
        f" {fmt_size(args.patch_size)}); 'small': scenario 2's load. Connections per worker: how the parent spread"
        " the 'big' connections over the workers (one entry per round, from /proc). CPU ceiling: the speed-up the"
        " cores allow, min(N, cores / (server + client cores of the 1-worker run)), as the client needs its CPU too."
        f" Medians of {args.rounds} round(s); the first verdict divides the speed-up by the number of workers, the"
        " second by the CPU ceiling. tusd: GOMAXPROCS=1 in the 1-worker row, its default (Go uses every core) in the"
        f" {counts[-1]}-worker row; its 'vs 1 worker' is its default over GOMAXPROCS=1.")] + ratios
    out += skipped_notes(ctx, "workers_servers")
    return {
        "title": f"Scenario 5: --workers {counts[-1]} vs --workers 1 on {cores} cores"
        + (", beside tusd" if "tusd" in args.workers_servers else ""),
        "table": out,
        "summary": summary,
        "verdicts": verdicts,
        "runs": {"big": rows_big, "small": rows_small},
    }
