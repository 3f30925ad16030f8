"""The command line of scripts/bench: the options of every scenario, --quick and --list, the run of the chosen
scenarios one after the other, the verdicts at the end and the JSON of everything."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from bench.harness.context import Ctx
from bench.harness.errors import BenchError, ScenarioSkipped
from bench.harness.machine import QUIET, machine_info
from bench.harness.paths import REPO_DIR
from bench.harness.proc import mount_of
from bench.harness.report import format_verdict, report_scenario, write_json
from bench.harness.servers import BASELINE, PEER_BINARIES, PYTUSD_INSTALLS, SERVERS, stop_all_servers
from bench.harness.units import GiB, KiB, MiB, parse_size
from bench.scenarios import SCENARIO_NAMES, SCENARIOS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark pytusd against tusd (Go), rustus (Rust), @tus/server (Node), the raw sink, boto3 and"
        " itself on this machine; every comparison is measured in the same run, alternating, and reported as medians"
        " and ratios.",
    )
    p.add_argument("scenario_name", nargs="?", default="", metavar="SCENARIO",
                   help="a scenario by name (upload-1g, small-uploads, slow-uploads, s3, workers); see --scenario")
    p.add_argument("--scenario", default="", help="comma-separated scenario numbers or names (default: all: 1,2,3,4,5)")
    p.add_argument("--list", action="store_true", help="list scenarios and exit")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 round, small sizes and short durations (~3 min instead of ~14; no verdicts)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    g = p.add_argument_group("scenario 1 (upload-1g)")
    g.add_argument("--size", type=parse_size, default=None, help="upload size (default 1GiB; e.g. 64MiB)")
    g.add_argument("--patch-size", type=parse_size, default=16 * MiB,
                   help="PATCH size of variant a, and of scenario 5's uploads (default 16MiB)")
    g.add_argument(
        "--variants", default="", help="comma-separated subset: patch-16MiB (a, chunked), patch-single (b, single)"
    )
    g.add_argument(
        "--servers", default="pytusd,tusd,rustus-tuned,tus-node,raw-sink",
        help="comma-separated subset of: " + ", ".join(SERVERS) + " (rustus-tuned: rustus refuses PATCHes > 256 KiB)"
    )
    g.add_argument("--warmup-size", type=parse_size, default=8 * MiB, help="warm-up upload per server (default 8MiB)")
    g.add_argument("--no-warmup", dest="warmup_size", action="store_const", const=0, help="skip the warm-up upload")
    g.add_argument(
        "--prefault",
        type=parse_size,
        default=None,
        help="memory to populate and release right before each PATCH phase (default size+512MiB; see README)",
    )
    g.add_argument("--no-prefault", dest="prefault", action="store_const", const=0, help="do not prefault memory")
    g.add_argument("--no-sha256", dest="sha256", action="store_false", help="skip the sha256 checks in round 1")
    g = p.add_argument_group("scenario 2 (small-uploads; also scenario 5's small-request load)")
    g.add_argument("--clients", type=int, default=200, help="concurrent clients (default 200)")
    g.add_argument("--body-size", type=parse_size, default=256 * KiB, help="bytes per upload (default 256KiB)")
    g.add_argument("--duration", type=float, default=6.0, help="measured seconds per server and round (default 6)")
    g.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before that (default 2)")
    g.add_argument("--small-servers", default="pytusd,tusd,rustus,tus-node,raw-sink",
                   help="comma-separated subset of the --servers list (default: pytusd,tusd,rustus,tus-node,raw-sink)")
    g.add_argument("--head-servers", default="pytusd,tusd",
                   help="the servers of the HEAD load (HEAD of existing uploads under the same load; any of --servers"
                   " but the raw sink; default: pytusd,tusd; empty: skip it)")
    g.add_argument("--small-work-dir", default="",
                   help="where these uploads go (default: /dev/shm when it has 8 GiB free, else --work-dir; see README)")
    g = p.add_argument_group("scenario 3 (slow-uploads)")
    g.add_argument("--slow-uploads", type=int, default=1000, help="uploads held open at once (default 1000)")
    g.add_argument("--slow-chunk", type=parse_size, default=4 * KiB, help="bytes per chunk (default 4KiB)")
    g.add_argument("--slow-chunks", type=int, default=15, help="chunks per upload (default 15)")
    g.add_argument("--slow-interval", type=float, default=1.0, help="seconds between chunks (default 1)")
    g.add_argument("--slow-ramp", type=float, default=5.0, help="seconds over which the uploads open (default 5)")
    g.add_argument("--slow-servers", default="pytusd,tusd,rustus,tus-node",
                   help="comma-separated subset of: pytusd, pytusd-baseline, tusd, rustus, tus-node"
                   " (default: pytusd,tusd,rustus,tus-node)")
    g = p.add_argument_group("scenario 4 (s3)")
    g.add_argument("--s3-size", type=parse_size, default=GiB, help="upload size (default 1GiB)")
    g.add_argument("--memstore", type=parse_size, default=4 * GiB, help="Ceph memstore OSD size (default 4GiB)")
    g.add_argument("--s3-servers", default="pytusd,tusd",
                   help="the servers sending to RGW, each with and without content hashes: pytusd, pytusd-baseline,"
                   " tusd (default: pytusd,tusd)")
    g = p.add_argument_group("scenario 5 (workers)")
    g.add_argument("--parallel-uploads", type=int, default=8, help="uploads at once in the 'big' load (default 8)")
    g.add_argument("--parallel-size", type=parse_size, default=GiB, help="their total size (default 1GiB)")
    g.add_argument("--max-workers", type=int, default=0, help="workers compared with 1 (default: the core count)")
    g.add_argument("--workers-servers", default="pytusd,tusd",
                   help="the servers compared: pytusd, pytusd-baseline (each with 1 and N workers), tusd (its default"
                   " and GOMAXPROCS=1; default: pytusd,tusd)")
    g = p.add_argument_group("all scenarios")
    g.add_argument("--work-dir", default=tempfile.gettempdir(), help="where upload dirs go (default: the temp dir)")
    g.add_argument("--settle", type=float, default=1.0, help="seconds to pause between measurements (default 1)")
    g.add_argument("--timeout", type=float, default=600.0, help="socket timeout per request in seconds")
    g.add_argument("--start-timeout", type=float, default=30.0, help="seconds to wait for a server to listen")
    g.add_argument("--no-json", dest="json", action="store_false", help="do not write bench/results/<time>.json")
    g.add_argument("--baseline-python", default=BASELINE["python"], metavar="PATH",
                   help="the python of another pytusd install, run as the opt-in server pytusd-baseline"
                   " (`PATH -m pytusd`; default $PYTUSD_BASELINE_PYTHON; scripts/bench-baseline [REF] builds one)")
    g.add_argument("--pytusd-args", default="",
                   help="extra flags for every pytusd started, one shell-quoted string (e.g. '--fsync')")
    g.add_argument("--quiet-cores", type=float, default=0.25,
                   help="before each measurement, wait until other processes use less than this many cores (0.25)")
    g.add_argument("--wait-quiet", type=float, default=45.0,
                   help="... but at most this many seconds (default 45; 0: do not wait)")
    return p


def choose_scenarios(args: argparse.Namespace) -> list[int]:
    chosen = [x.strip() for x in (args.scenario or args.scenario_name).split(",") if x.strip()]
    if not chosen:
        return sorted(SCENARIOS)
    out = []
    for x in chosen:
        number = int(x) if x.isdigit() else SCENARIO_NAMES.get(x)
        if number not in SCENARIOS:
            raise BenchError(f"unknown scenario {x!r}; known: "
                             + ", ".join(f"{s.number} ({s.name})" for s in SCENARIOS.values()))
        out.append(number)
    return out


def apply_quick(args: argparse.Namespace) -> None:
    """--quick: every scenario small and short (a check that everything works; too small for a verdict)."""
    args.rounds = 1
    args.size = args.size or 64 * MiB
    args.duration, args.warmup = 2.0, 0.5
    args.slow_uploads, args.slow_chunks, args.slow_ramp = 200, 4, 1.0
    args.s3_size, args.memstore = 64 * MiB, 1 * GiB
    args.parallel_size = 128 * MiB
    args.settle = 0.2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.number}  {s.name:<14} {s.minutes:>3} min  {s.help}")
        return 0
    try:
        chosen = choose_scenarios(args)
    except BenchError as exc:
        print(exc, file=sys.stderr)
        return 2
    args.servers = [s for s in args.servers.split(",") if s]
    args.small_servers = [s for s in args.small_servers.split(",") if s]
    args.head_servers = [s for s in args.head_servers.split(",") if s and s != "raw-sink"]
    for s in args.servers + args.small_servers + args.head_servers:
        if s not in SERVERS:
            print(f"unknown server {s!r}; known: {', '.join(SERVERS)}", file=sys.stderr)
            return 2
    for key, allowed in (("slow_servers", (*PYTUSD_INSTALLS, "tusd", "rustus", "tus-node")),
                         ("s3_servers", (*PYTUSD_INSTALLS, "tusd")), ("workers_servers", (*PYTUSD_INSTALLS, "tusd"))):
        setattr(args, key, [s for s in getattr(args, key).split(",") if s])
        for s in getattr(args, key):
            if s not in allowed:
                print(f"--{key.replace('_', '-')}: unknown server {s!r}; known: {', '.join(allowed)}", file=sys.stderr)
                return 2
    BASELINE["python"] = args.baseline_python
    wanted = {1: args.servers, 2: args.small_servers, 3: args.slow_servers, 4: args.s3_servers, 5: args.workers_servers}
    if any("pytusd-baseline" in wanted[n] for n in chosen):
        if not args.baseline_python or not os.access(args.baseline_python, os.X_OK):
            print(f"pytusd-baseline needs --baseline-python PATH (a python with another pytusd installed; got"
                  f" {args.baseline_python!r}); scripts/bench-baseline [REF] builds one", file=sys.stderr)
            return 2
    # A peer that is not installed (tusd without Go, rustus without cargo) is left out and reported as skipped by the
    # scenarios naming it.
    missing = {}
    for name, binary in PEER_BINARIES.items():
        if not os.access(binary, os.X_OK):
            how = "with Go" if name.startswith("tusd") else "with cargo (scripts/install-rustus)"
            missing[name] = (f"not installed ({os.path.relpath(binary, REPO_DIR)} missing; scripts/bench builds it"
                             f" {how}, which is missing or failed)")
    keys = ("servers", "small_servers", "head_servers", "slow_servers", "s3_servers", "workers_servers")
    args.skipped = {key: {n: missing[n] for n in getattr(args, key) if n in missing} for key in keys}
    for key in keys:
        setattr(args, key, [s for s in getattr(args, key) if s not in missing])
    if args.rounds < 1:
        print("--rounds must be >= 1", file=sys.stderr)
        return 2
    if args.quick:
        apply_quick(args)
    QUIET.update(cores=args.quiet_cores, wait_s=args.wait_quiet)
    if args.pytusd_args:  # --pytusd-args: every pytusd variant builds on SERVERS["pytusd"]
        extra, plain = shlex.split(args.pytusd_args), SERVERS["pytusd"]
        SERVERS["pytusd"] = dataclasses.replace(
            plain, label=f"{plain.label} {args.pytusd_args}", argv=lambda port, d: plain.argv(port, d) + extra
        )
    args.size = args.size or GiB

    base = os.path.realpath(args.work_dir)
    os.makedirs(base, exist_ok=True)
    need = max(args.size if 1 in chosen else 0, args.s3_size if 4 in chosen else 0) + 2 * args.warmup_size + 256 * MiB
    if shutil.disk_usage(base).free < need + (8 * GiB if 2 in chosen or 5 in chosen else 0):
        print(f"not enough free space in {base}: need about {need / GiB + 8:.1f} GiB", file=sys.stderr)
        return 2
    work_dir = tempfile.mkdtemp(prefix="pytusd-bench-", dir=base)
    small_base = args.small_work_dir
    if not small_base and os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free >= 8 * GiB:
        small_base = "/dev/shm"
    small_dir = tempfile.mkdtemp(prefix="pytusd-bench-small-", dir=small_base) if small_base else work_dir
    machine = machine_info(work_dir)
    machine["small_uploads_disk"] = mount_of(small_dir)
    if machine["disk"]["fstype"] in ("tmpfs", "ramfs"):
        print(f"warning: {base} is {machine['disk']['fstype']}: this measures memory, not a disk (see --work-dir)")

    # SIGTERM/SIGHUP to the benchmark: unwind through the finally blocks that stop the servers.
    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    started = dt.datetime.now(dt.timezone.utc)
    print(
        f"scenarios {', '.join(map(str, chosen))}: {args.rounds} round(s);"
        f" {machine['nproc']} cores, {machine['mem_total_gib']} GiB RAM,"
        f" work dir {work_dir} ({machine['disk']['fstype']} on {machine['disk']['device']})",
        flush=True,
    )
    ctx = Ctx(args=args, work_dir=work_dir, small_dir=small_dir)
    results: dict[str, Any] = {}
    report: list[str] = []
    status = 0
    try:
        for number in chosen:
            scenario = SCENARIOS[number]
            print(f"\n== scenario {number} ({scenario.name}): {scenario.help}", flush=True)
            t0 = time.perf_counter()
            try:
                result = scenario.run(ctx)
            except ScenarioSkipped as exc:
                print(f"scenario {number} skipped: {exc}", flush=True)
                results[str(number)] = {"skipped": str(exc)}
                continue
            except BenchError as exc:
                print(f"scenario {number} failed: {exc}", file=sys.stderr)
                print(f"(server logs kept in {work_dir})", file=sys.stderr)
                results[str(number)] = {"error": str(exc)}
                status = 1
                continue
            result["seconds"] = time.perf_counter() - t0
            results[str(number)] = result
            report += report_scenario(number, result) + [""]
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        stop_all_servers()
    if small_dir != work_dir:
        shutil.rmtree(small_dir, ignore_errors=True)
    if status == 0:
        shutil.rmtree(work_dir, ignore_errors=True)

    verdicts = [v for r in results.values() for v in r.get("verdicts", [])]
    if len(chosen) > 1 and verdicts:
        print("\n## Verdicts" + (" (--quick: sizes too small for a verdict)" if args.quick else ""))
        for v in verdicts:
            print(f"- {format_verdict(v)}")
    if args.json:
        path = write_json(results, started, args, machine, verdicts, report)
        print(f"\nresults written to {os.path.relpath(path, os.getcwd())}")
    return status
