"""Scenario 4, s3: one large upload into Ceph RADOS Gateway through pytusd, against tusd's S3 store and boto3's
upload_file directly.

Ceph is started by testbed.services.ceph_rgw, the starter the test suite uses too."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.harness.client import RawHTTPClient, create_upload, patch_all
from bench.harness.context import Ctx
from bench.harness.errors import BenchError, ScenarioSkipped
from bench.harness.machine import prefault_memory, wait_for_quiet
from bench.harness.proc import machine_busy_seconds, memory_kib, proc_counters, steal_seconds
from bench.harness.paths import TUSD_BIN
from bench.harness.report import skipped_notes, verdict
from bench.harness.servers import ServerSpec, finish_server, fresh_server, pytusd_spec
from bench.harness.stats import median_of, new_over_old, rotate
from bench.harness.units import GiB, KiB, MB, MiB, fmt_size
from bench.scenarios.targets import TARGET_S3_RATIO, TARGET_TUSD_S3
from testbed.services import CEPH_PROGRAMS, S3_ACCESS_KEY, S3_SECRET_KEY, ceph_rgw, missing_programs


def _ceph_pids(root: str) -> list[int]:
    pids = []
    for name in ("client.rgw.a.pid", "osd.0.pid", "mon.a.pid"):
        try:
            with open(os.path.join(root, "run", name)) as f:
                pids.append(int(f.read().strip()))
        except (OSError, ValueError):
            pass
    return pids


def run(ctx: Ctx) -> dict[str, Any]:
    missing = missing_programs(*CEPH_PROGRAMS)
    if missing:
        raise ScenarioSkipped(f"Ceph is not installed (missing {', '.join(missing)}; scripts/test installs it)")
    try:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config as BotoConfig
    except ImportError as exc:
        raise BenchError(f"scenario 4 needs boto3: {exc}") from exc
    args = ctx.args
    size = args.s3_size
    data = ctx.random(size)
    root = os.path.join(ctx.work_dir, "ceph")
    payload = os.path.join(ctx.work_dir, "s3-payload.bin")
    with open(payload, "wb") as f:
        f.write(data)
    creds = {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}
    print(f"  starting Ceph (memstore {fmt_size(args.memstore)}) in {root}", flush=True)
    rows: list[dict[str, Any]] = []
    try:
        with ceph_rgw(Path(root), memstore_bytes=args.memstore) as endpoint:
            conf = os.path.join(root, "ceph.conf")
            ceph = _ceph_pids(root)
            s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_ACCESS_KEY,
                              aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1")
            bucket = "bench"
            s3.create_bucket(Bucket=bucket)
            # boto3 as a user would call it: upload_file with its defaults (8 MiB parts, 10 threads, its default
            # checksum settings); "tuned" = pytusd's own client settings and part size.
            boto_default = s3
            boto_tuned = boto3.client(
                "s3", endpoint_url=endpoint, aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY,
                region_name="us-east-1",
                config=BotoConfig(max_pool_connections=26, request_checksum_calculation="when_required",
                                  response_checksum_validation="when_required"),
            )

            def clean() -> None:
                for up in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
                    s3.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
                for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
                    s3.delete_object(Bucket=bucket, Key=obj["Key"])
                subprocess.run(["radosgw-admin", "-c", conf, "gc", "process", "--include-all"],
                               capture_output=True, timeout=300)

            def ceph_cpu() -> float:
                return sum(proc_counters(p).cpu_s for p in ceph)

            def via_boto(variant: str, r: int) -> dict[str, Any]:
                client = boto_default if variant == "boto3" else boto_tuned
                config = TransferConfig() if variant == "boto3" else TransferConfig(
                    multipart_chunksize=50 * MiB, max_concurrency=10)
                key = f"direct-{r}"
                quiet = wait_for_quiet()
                prefault_memory(size + 512 * MiB)
                c0, ceph0, steal0, busy0 = time.process_time(), ceph_cpu(), steal_seconds(), machine_busy_seconds()
                t0 = time.perf_counter()
                client.upload_file(payload, bucket, key, Config=config)
                wall = time.perf_counter() - t0
                cpu, ceph_s, steal = time.process_time() - c0, ceph_cpu() - ceph0, steal_seconds() - steal0
                other = max(0.0, machine_busy_seconds() - busy0 - cpu - ceph_s) / wall
                stored = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
                if stored != size:
                    raise BenchError(f"{variant}: object has {stored} bytes, expected {size}")
                return {"client_cpu_s": cpu, "server_cpu_s": 0.0, "wall_s": wall, "ceph_cpu_s": ceph_s,
                        "steal_s": steal, "other_cores": other, **quiet, "peak_rss_mb": None, "sha256_ok": None}

            def via_server(r: int, variant: str) -> dict[str, Any]:
                nohash = variant.endswith("-nohash")
                base = variant.removesuffix("-nohash")
                if base == "tusd":
                    # tusd's S3 store, its defaults (50 MiB parts, 10 part uploads at once, 20 buffered parts):
                    # the same as pytusd's; -s3-disable-content-hashes is the one throughput flag its docs name.
                    spec = ServerSpec(
                        name="tusd-s3", label="tusd -> S3",
                        argv=lambda port, d: [
                            TUSD_BIN, "-host", "127.0.0.1", "-port", str(port), "-base-path", "/files/",
                            "-s3-bucket", bucket, "-s3-endpoint", endpoint, "-verbose=false",
                            *(["-s3-disable-content-hashes"] if nohash else []),
                        ],
                        env={**creds, "AWS_REGION": "us-east-1"},
                    )
                else:
                    extra = ["--s3-disable-content-hashes"] if nohash else []
                    spec = pytusd_spec("pytusd-s3", "pytusd -> S3", "--s3-bucket", bucket, "--s3-endpoint", endpoint,
                                       *extra, env=creds, base=base)
                server = fresh_server(ctx, spec, f"s4-r{r}-{variant}")
                try:
                    clean()
                    quiet = wait_for_quiet()
                    with RawHTTPClient("127.0.0.1", server.port, args.timeout) as client:
                        w = data[: 8 * MiB]
                        wt, _ = create_upload(client, spec.base_path, len(w))
                        patch_all(client, wt, w, len(w))
                        prefault_memory(size + 512 * MiB)
                        target, upload_id = create_upload(client, spec.base_path, size)
                        counters0, c0, ceph0 = proc_counters(server.pid), time.process_time(), ceph_cpu()
                        steal0, busy0 = steal_seconds(), machine_busy_seconds()
                        t0 = time.perf_counter()
                        patch_all(client, target, data, size)
                        wall = time.perf_counter() - t0
                        counters = proc_counters(server.pid) - counters0
                        cpu, ceph_s = time.process_time() - c0, ceph_cpu() - ceph0
                        steal = steal_seconds() - steal0
                        other = max(0.0, machine_busy_seconds() - busy0 - cpu - ceph_s - counters.cpu_s) / wall
                        _, hwm = memory_kib(server.pid)
                    key = upload_id.split("+", 1)[0]
                    stored = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
                    if stored != size:
                        raise BenchError(f"{variant}: object {key} has {stored} bytes, expected {size}")
                    sha_ok = None
                    if r == 1 and args.sha256:
                        h = hashlib.sha256()
                        for block in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(4 * MiB):
                            h.update(block)
                        sha_ok = h.hexdigest() == ctx.sha256(size)
                        if not sha_ok:
                            raise BenchError(f"{variant}: the object's sha256 differs from the bytes sent")
                finally:
                    finish_server(ctx, server)
                return {"client_cpu_s": cpu, "server_cpu_s": counters.cpu_s, "wall_s": wall, "ceph_cpu_s": ceph_s,
                        "steal_s": steal, "other_cores": other, **quiet, "peak_rss_mb": hwm * KiB / MB,
                        "sha256_ok": sha_ok}

            # --s3-servers (pytusd, pytusd-baseline, tusd): each with and without hashes, alternating with boto3.
            variants = [*args.s3_servers, "boto3", *(f"{n}-nohash" for n in args.s3_servers), "boto3-tuned"]
            # Warm-up of boto3 (imports, connection pool) outside the measurement.
            boto_default.upload_file(payload, bucket, "warmup", Config=TransferConfig(multipart_threshold=size * 2)) \
                if size <= 64 * MiB else boto_default.put_object(Bucket=bucket, Key="warmup", Body=b"x" * 1024)
            for r in range(1, args.rounds + 1):
                for variant in rotate(variants, r - 1):
                    clean()
                    res = via_boto(variant, r) if variant.startswith("boto3") else via_server(r, variant)
                    res.update(round=r, variant=variant, size=size, mb_per_s=size / res["wall_s"] / MB)
                    rows.append(res)
                    print(
                        f"  round {r}/{args.rounds} {variant:<12} {res['mb_per_s']:7.0f} MB/s  server cpu"
                        f" {res['server_cpu_s']:.2f} s  client cpu {res['client_cpu_s']:.2f} s  ceph cpu"
                        f" {res['ceph_cpu_s']:.2f} s  others {res['other_cores']:.2f} cores  steal {res['steal_s']:.2f} s",
                        flush=True,
                    )
            clean()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(payload)
    gib = size / GiB
    out = [
        "| path | MB/s median (min-max) | server CPU-s/GiB | bench client CPU-s/GiB | Ceph CPU-s/GiB"
        " | server peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {}
    labels = {"pytusd": "client -> pytusd -> RGW",
              "pytusd-nohash": "client -> pytusd --s3-disable-content-hashes -> RGW",
              "tusd": "client -> tusd -> RGW",
              "tusd-nohash": "client -> tusd -s3-disable-content-hashes -> RGW",
              "boto3": "boto3 upload_file (defaults) -> RGW",
              "boto3-tuned": "boto3 upload_file (pytusd's settings) -> RGW",
              "pytusd-baseline": "client -> pytusd (baseline) -> RGW",
              "pytusd-baseline-nohash": "client -> pytusd (baseline) --s3-disable-content-hashes -> RGW"}
    for variant in [v for v in labels if any(x["variant"] == v for x in rows)]:
        mine = [x for x in rows if x["variant"] == variant]
        mbs = [x["mb_per_s"] for x in mine]
        entry = {k: median_of(mine, k) for k in ("mb_per_s", "server_cpu_s", "client_cpu_s", "ceph_cpu_s")}
        entry["peak_rss_mb"] = None if variant.startswith("boto3") else median_of(mine, "peak_rss_mb")
        summary[variant] = entry
        rss = f"{entry['peak_rss_mb']:.0f}" if entry["peak_rss_mb"] is not None else "-"
        out.append(
            f"| {labels[variant]} | {entry['mb_per_s']:.0f} ({min(mbs):.0f}-{max(mbs):.0f})"
            f" | {entry['server_cpu_s'] / gib:.2f} | {entry['client_cpu_s'] / gib:.2f} | {entry['ceph_cpu_s'] / gib:.2f}"
            f" | {rss} |"
        )
    out += ["", (
        f"one {fmt_size(size)} upload per path per round (pytusd: POST + one PATCH, defaults: 50 MiB parts, 10 part"
        f" uploads at once, each part's SHA-256 signed unless --s3-disable-content-hashes (then presigned URLs);"
        f" boto3: upload_file of the same bytes from a file in the page cache), Ceph RGW 16 with a"
        f" {fmt_size(args.memstore)} memstore OSD on this machine, objects deleted and RGW's gc run between uploads;"
        f" medians of {args.rounds} round(s). CPU: the server process / the bench process (the client; for boto3,"
        " boto3 itself) / radosgw + ceph-osd + ceph-mon. tusd: its S3 store with its defaults (the same part size"
        " and concurrency as pytusd's), and with -s3-disable-content-hashes.")]
    out += new_over_old(summary, lambda e: e["mb_per_s"], "MB/s")
    out += skipped_notes(ctx, "s3_servers")
    if "pytusd-nohash" in summary:
        out += new_over_old({k.removesuffix("-nohash"): v for k, v in summary.items() if k.endswith("-nohash")},
                            lambda e: e["mb_per_s"], "--s3-disable-content-hashes MB/s")
    if "pytusd" not in summary:
        return {"title": f"Scenario 4: one {fmt_size(size)} upload into Ceph RGW (S3)", "table": out,
                "summary": summary, "verdicts": [], "runs": rows}
    ratio = summary["pytusd"]["mb_per_s"] / summary["boto3"]["mb_per_s"]
    ratio_tuned = summary["pytusd"]["mb_per_s"] / summary["boto3-tuned"]["mb_per_s"]
    ratio_nohash = summary["pytusd-nohash"]["mb_per_s"] / summary["boto3-tuned"]["mb_per_s"]
    tusd_verdicts = []
    if "tusd" in summary:
        tusd_verdicts = [
            verdict("4: pytusd / tusd S3 store MB/s (defaults)", summary["pytusd"]["mb_per_s"]
                    / summary["tusd"]["mb_per_s"], TARGET_TUSD_S3),
            verdict("4: pytusd / tusd S3 store MB/s (both --s3-disable-content-hashes)",
                    summary["pytusd-nohash"]["mb_per_s"] / summary["tusd-nohash"]["mb_per_s"], TARGET_TUSD_S3),
        ]
    return {
        "title": f"Scenario 4: one {fmt_size(size)} upload into Ceph RGW (S3)",
        "table": out,
        "summary": summary,
        "verdicts": [
            verdict("4: pytusd / boto3 upload_file (defaults) MB/s", ratio, TARGET_S3_RATIO),
            verdict("4: pytusd / boto3 upload_file (pytusd's settings) MB/s", ratio_tuned, TARGET_S3_RATIO),
            verdict("4: pytusd --s3-disable-content-hashes / boto3 upload_file (pytusd's settings) MB/s",
                    ratio_nohash, TARGET_S3_RATIO),
            *tusd_verdicts,
        ],
        "runs": rows,
    }

