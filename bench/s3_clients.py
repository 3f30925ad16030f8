#!/usr/bin/env python3
"""Which S3 client should pytusd's S3 store use for UploadPart? Measured against a real S3 server.

One run uploads the same random payload as a multipart upload (CreateMultipartUpload, UploadPart xN with bounded
concurrency, CompleteMultipartUpload) with each variant, alternating the variants over several rounds:

  aiobotocore       aiobotocore client on the event loop (botocore signs the payload: SHA-256 over http)
  boto3-thread      boto3 client, each UploadPart in a ThreadPoolExecutor via loop.run_in_executor
  boto3-thread-crc  same, but with botocore's default checksum settings (adds x-amz-checksum-crc32)  [optional]
  presigned-httpx   presigned (SigV4, UNSIGNED-PAYLOAD) UploadPart URLs, PUT with httpx.AsyncClient; create and
                    complete through aiobotocore (what tusd's --s3-disable-content-hashes amounts to)
  presigned-aiohttp same with aiohttp.ClientSession  [optional]
  boto3-transfer    boto3's managed upload_file / upload_fileobj (s3transfer TransferManager): the reference
                    ceiling for "boto3 doing everything itself"; run in an executor so the ticker can watch the loop

While each upload runs, a ticker coroutine sleeps 1 ms in a loop on the same event loop and records the gaps
between its wake-ups: a long gap is time during which the loop could not have received request bodies of other
uploads. A gap has three causes, reported apart: the loop thread itself ran something long ("busy": the loop thread's
CPU time, time.thread_time(), within the gap); the OS ran other processes (the Ceph daemons share the CPUs) while the
loop thread was runnable (the run-queue wait from /proc/thread-self/schedstat); the rest is off-CPU waiting, mostly
for the GIL held by worker threads. "own" = gap minus run-queue wait, i.e. what the process causes itself.
--nice -10 makes the OS part smaller instead of only subtracting it.

The presigned variants stream a part file in --chunk-kib reads (default 1 MiB) and yield to the loop after each.
Process-wide glibc malloc tuning is applied as pytusd's server does (--no-malloc-tuning to skip).

Per run: wall time of the whole multipart upload (create .. complete), process CPU (all threads, user+sys),
CPU of the Ceph daemons on this machine (radosgw, ceph-osd) when they can be found in /proc, machine steal time.
Every upload is checked: the object's size and its multipart ETag (md5 of the part md5s + "-N") must match what
was computed locally. The object is deleted right after and, when radosgw-admin and a ceph.conf are available,
RGW's garbage collector is run (`gc process --include-all`), because RGW otherwise keeps the deleted parts for
2 hours and a 1 GiB memstore fills up after a few uploads.

  .venv/bin/python bench/s3_clients.py --endpoint http://127.0.0.1:7480 --size-mib 256 --part-mib 16 \\
      --concurrency 4 --rounds 3
  .venv/bin/python bench/s3_clients.py --concurrency 4,10 --rounds 5 --variants all   # what NOTES.md records
  .venv/bin/python bench/s3_clients.py --concurrency 4,10 --body bytes --variants all

MB = 10^6 bytes; MB/s = payload bytes / wall time of the whole multipart upload.
Results (every run plus medians) go to bench/results/s3_clients.json unless --json says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MB = 1_000_000
MiB = 1 << 20
GiB = 1 << 30

ALL_VARIANTS = [
    "aiobotocore",
    "boto3-thread",
    "boto3-thread-crc",
    "presigned-httpx",
    "presigned-aiohttp",
    "boto3-transfer",
]
DEFAULT_VARIANTS = ["aiobotocore", "boto3-thread", "presigned-httpx", "boto3-transfer"]
FILE_READ_CHUNK = 1 * MiB  # chunk size when the presigned variants stream a part from its file


# ----------------------------------------------------------------------------------------------------------------
# measurements


class Ticker:
    """Sleeps 1 ms in a loop on the running event loop and records the wall time between wake-ups."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.gaps: list[float] = []
        self.busy: list[float] = []  # CPU the loop thread itself burnt within each gap
        self.runq: list[float] = []  # time the loop thread was runnable but not running (OS preemption)
        self._task: asyncio.Task[None] | None = None
        self._stop = False

    async def _run(self) -> None:
        # /proc/thread-self/schedstat: CPU time and run-queue wait (runnable, but another task had the CPU), in ns
        try:
            fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            fd = -1

        def runq_wait() -> float:
            return int(os.pread(fd, 100, 0).split()[1]) / 1e9 if fd >= 0 else 0.0

        last = time.perf_counter()
        last_cpu = time.thread_time()  # CPU time of the loop thread
        last_rq = runq_wait()
        try:
            while not self._stop:
                await asyncio.sleep(self.interval)
                now = time.perf_counter()
                cpu = time.thread_time()
                rq = runq_wait()
                self.gaps.append(now - last)
                self.busy.append(cpu - last_cpu)
                self.runq.append(rq - last_rq)
                last, last_cpu, last_rq = now, cpu, rq
        finally:
            if fd >= 0:
                os.close(fd)

    def start(self) -> None:
        self._stop = False
        self.gaps = []
        self.busy = []
        self.runq = []
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> dict[str, float]:
        self._stop = True
        assert self._task is not None
        await self._task
        st = gap_stats(self.gaps)
        b = sorted(self.busy)
        st["busy_max_ms"] = b[-1] * 1000.0 if b else float("nan")
        if self.gaps:
            # where the time in the longest gap went: loop-thread CPU, run-queue wait, the rest is off-CPU
            # (the 1 ms timer, GIL waits, blocking syscalls)
            i = self.gaps.index(max(self.gaps))
            st["max_gap_busy_ms"] = self.busy[i] * 1000.0
            st["max_gap_runq_ms"] = self.runq[i] * 1000.0
            r = sorted(self.runq)
            st["runq_max_ms"] = r[-1] * 1000.0
            # gaps with the OS preemption taken out: what the process itself is responsible for
            own = sorted(g - q for g, q in zip(self.gaps, self.runq))
            st["own_max_ms"] = own[-1] * 1000.0
            st["own_p99_ms"] = own[min(len(own) - 1, int(0.99 * len(own)))] * 1000.0
            st["busy_share"] = sum(self.busy) / sum(self.gaps)
        if self.gaps:  # when, in seconds after start, the longest gap / longest busy stretch ended
            st["max_at_s"] = sum(self.gaps[: self.gaps.index(max(self.gaps)) + 1])
            st["busy_max_at_s"] = sum(self.gaps[: self.busy.index(max(self.busy)) + 1])
        st["busy_p99_ms"] = b[min(len(b) - 1, int(0.99 * len(b)))] * 1000.0 if b else float("nan")
        return st


def gap_stats(gaps: list[float]) -> dict[str, float]:
    if not gaps:
        return {"ticks": 0, "max_ms": float("nan"), "p99_ms": float("nan"), "p50_ms": float("nan")}
    s = sorted(gaps)
    p = lambda q: s[min(len(s) - 1, int(q * len(s)))] * 1000.0
    return {
        "ticks": len(s),
        "max_ms": s[-1] * 1000.0,
        "p99_ms": p(0.99),
        "p50_ms": p(0.50),
        "over_10ms": sum(1 for g in s if g > 0.010),
        "over_50ms": sum(1 for g in s if g > 0.050),
    }


def find_ceph_pids(ceph_conf: str | None = None) -> dict[str, int]:
    """radosgw and ceph-osd processes on this machine; only those started with `ceph_conf` when it is given (other
    Ceph instances on the same machine are not the server under test)."""
    pids = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            comm = (d / "comm").read_text().strip()
            if comm not in ("radosgw", "ceph-osd"):
                continue
            cmdline = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if ceph_conf and os.fsencode(ceph_conf) not in cmdline:
            continue
        pids[f"{comm}:{d.name}"] = int(d.name)
    return pids


def proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def proc_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def steal_seconds() -> float:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


# ----------------------------------------------------------------------------------------------------------------
# payload


@dataclass
class Payload:
    size: int
    part_size: int
    body_mode: str  # "file" or "bytes"
    workdir: Path
    parts: list[bytes] = field(default_factory=list)  # bytes mode: the part bodies
    part_paths: list[Path] = field(default_factory=list)  # file mode: one file per part
    whole_path: Path | None = None  # the whole payload as one file (boto3-transfer in file mode)
    data: bytes = b""
    expected_etag: str = ""

    @property
    def n_parts(self) -> int:
        return len(self.part_sizes)

    @property
    def part_sizes(self) -> list[int]:
        return [min(self.part_size, self.size - off) for off in range(0, self.size, self.part_size)]


def make_payload(size: int, part_size: int, body_mode: str, workdir: Path) -> Payload:
    data = os.urandom(size)
    p = Payload(size=size, part_size=part_size, body_mode=body_mode, workdir=workdir, data=data)
    md5s = b""
    for i, off in enumerate(range(0, size, part_size)):
        chunk = data[off : off + part_size]
        md5s += hashlib.md5(chunk).digest()
        if body_mode == "bytes":
            p.parts.append(chunk)
        else:
            path = workdir / f"part-{i + 1:05d}"
            path.write_bytes(chunk)
            p.part_paths.append(path)
    p.expected_etag = f'"{hashlib.md5(md5s).hexdigest()}-{len(range(0, size, part_size))}"'
    if body_mode == "file":
        p.whole_path = workdir / "whole"
        p.whole_path.write_bytes(data)
        for path in [*p.part_paths, p.whole_path]:  # make sure it sits in the page cache
            path.read_bytes()
    return p


# ----------------------------------------------------------------------------------------------------------------
# clients


@dataclass
class Clients:
    concurrency: int
    aio: Any = None  # aiobotocore client
    boto: Any = None  # boto3 client (when_required checksums)
    boto_crc: Any = None  # boto3 client with default checksum settings
    presigner: Any = None  # botocore client used only to presign (SigV4)
    httpx: Any = None
    aiohttp: Any = None
    executor: concurrent.futures.ThreadPoolExecutor | None = None


def botocore_config_kwargs(args: argparse.Namespace, concurrency: int, default_checksums: bool = False) -> dict:
    kw: dict[str, Any] = {
        "s3": {"addressing_style": "path"},
        "max_pool_connections": max(args.pool or concurrency, 1),
        "retries": {"max_attempts": 3, "mode": "standard"},
        "connect_timeout": 10,
        "read_timeout": 300,
    }
    if not default_checksums:
        kw["request_checksum_calculation"] = "when_required"
        kw["response_checksum_validation"] = "when_required"
    return kw


async def open_clients(
    args: argparse.Namespace, concurrency: int, variants: list[str], stack: contextlib.AsyncExitStack
) -> Clients:
    import boto3
    from botocore.config import Config

    c = Clients(concurrency=concurrency)
    creds = {
        "endpoint_url": args.endpoint,
        "aws_access_key_id": args.access_key,
        "aws_secret_access_key": args.secret_key,
        "region_name": args.region,
    }
    need_aio = any(v in variants for v in ("aiobotocore", "presigned-httpx", "presigned-aiohttp"))
    if need_aio:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        c.aio = await stack.enter_async_context(
            get_session().create_client("s3", config=AioConfig(**botocore_config_kwargs(args, concurrency)), **creds)
        )
    session = boto3.session.Session()
    c.boto = session.client("s3", config=Config(**botocore_config_kwargs(args, concurrency)), **creds)
    stack.callback(c.boto.close)
    if "boto3-thread-crc" in variants:
        c.boto_crc = session.client(
            "s3", config=Config(**botocore_config_kwargs(args, concurrency, default_checksums=True)), **creds
        )
        stack.callback(c.boto_crc.close)
    c.presigner = session.client(
        "s3", config=Config(signature_version="s3v4", s3={"addressing_style": "path"}), **creds
    )
    if "presigned-httpx" in variants:
        import httpx

        c.httpx = await stack.enter_async_context(
            httpx.AsyncClient(
                timeout=httpx.Timeout(300.0, connect=10.0),
                limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            )
        )
    if "presigned-aiohttp" in variants:
        import aiohttp

        c.aiohttp = await stack.enter_async_context(
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=concurrency),
                timeout=aiohttp.ClientTimeout(total=300),
                auto_decompress=False,
            )
        )
    c.executor = concurrent.futures.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="s3part")
    stack.callback(c.executor.shutdown)
    return c


# ----------------------------------------------------------------------------------------------------------------
# the variants: each does one complete multipart upload of the payload to (bucket, key)


async def gather_parts(n: int, concurrency: int, upload_one: Callable[[int], Awaitable[str]]) -> list[dict]:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> dict:
        async with sem:
            etag = await upload_one(i)
        return {"PartNumber": i + 1, "ETag": etag}

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def file_chunks(path: Path, chunk: int | None = None):
    # Reads on the loop thread: the part file sits in the page cache, a 1 MiB read costs ~0.1-0.3 ms.
    # The sleep(0) matters: when the kernel takes every chunk at once (loopback, large socket buffers), the HTTP
    # client's write/drain never suspends and one part would push several MiB without giving the loop back.
    chunk = chunk or FILE_READ_CHUNK
    with open(path, "rb", buffering=0) as f:  # noqa: ASYNC230 - page-cache file, measured as is
        while block := f.read(chunk):
            yield block
            await asyncio.sleep(0)


async def up_aiobotocore(cl: Clients, p: Payload, bucket: str, key: str) -> None:
    s3 = cl.aio
    mp = await s3.create_multipart_upload(Bucket=bucket, Key=key)
    uid = mp["UploadId"]
    try:

        async def one(i: int) -> str:
            if p.body_mode == "bytes":
                r = await s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=i + 1, Body=p.parts[i])
            else:
                with open(p.part_paths[i], "rb") as f:  # noqa: ASYNC230
                    r = await s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=i + 1, Body=f)
            return r["ETag"]

        parts = await gather_parts(p.n_parts, cl.concurrency, one)
        await s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": parts})
    except BaseException:
        with contextlib.suppress(Exception):
            await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=uid)
        raise


def _boto_upload_part(s3: Any, p: Payload, bucket: str, key: str, uid: str, i: int) -> str:
    if p.body_mode == "bytes":
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=i + 1, Body=p.parts[i])
    else:
        with open(p.part_paths[i], "rb") as f:
            r = s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=i + 1, Body=f)
    return r["ETag"]


async def _up_boto_thread(s3: Any, cl: Clients, p: Payload, bucket: str, key: str) -> None:
    loop = asyncio.get_running_loop()
    ex = cl.executor
    mp = await loop.run_in_executor(ex, lambda: s3.create_multipart_upload(Bucket=bucket, Key=key))
    uid = mp["UploadId"]
    try:

        async def one(i: int) -> str:
            return await loop.run_in_executor(ex, _boto_upload_part, s3, p, bucket, key, uid, i)

        parts = await gather_parts(p.n_parts, cl.concurrency, one)
        await loop.run_in_executor(
            ex,
            lambda: s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": parts}
            ),
        )
    except BaseException:
        with contextlib.suppress(Exception):
            await loop.run_in_executor(ex, lambda: s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=uid))
        raise


async def up_boto3_thread(cl: Clients, p: Payload, bucket: str, key: str) -> None:
    await _up_boto_thread(cl.boto, cl, p, bucket, key)


async def up_boto3_thread_crc(cl: Clients, p: Payload, bucket: str, key: str) -> None:
    await _up_boto_thread(cl.boto_crc, cl, p, bucket, key)


def presign_part(cl: Clients, bucket: str, key: str, uid: str, part_number: int) -> str:
    # Pure local computation (HMAC), cheap enough for the event loop.
    return cl.presigner.generate_presigned_url(
        "upload_part",
        Params={"Bucket": bucket, "Key": key, "UploadId": uid, "PartNumber": part_number},
        ExpiresIn=3600,
    )


async def _up_presigned(
    cl: Clients, p: Payload, bucket: str, key: str, put: Callable[[str, int], Awaitable[str]]
) -> None:
    s3 = cl.aio
    mp = await s3.create_multipart_upload(Bucket=bucket, Key=key)
    uid = mp["UploadId"]
    try:

        async def one(i: int) -> str:
            return await put(presign_part(cl, bucket, key, uid, i + 1), i)

        parts = await gather_parts(p.n_parts, cl.concurrency, one)
        await s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": parts})
    except BaseException:
        with contextlib.suppress(Exception):
            await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=uid)
        raise


async def up_presigned_httpx(cl: Clients, p: Payload, bucket: str, key: str) -> None:
    async def put(url: str, i: int) -> str:
        size = p.part_sizes[i]
        body = p.parts[i] if p.body_mode == "bytes" else file_chunks(p.part_paths[i])
        r = await cl.httpx.put(url, content=body, headers={"Content-Length": str(size)})
        if r.status_code != 200:
            raise RuntimeError(f"presigned PUT part {i + 1}: HTTP {r.status_code}: {r.text[:300]}")
        return r.headers["ETag"]

    await _up_presigned(cl, p, bucket, key, put)


async def up_presigned_aiohttp(cl: Clients, p: Payload, bucket: str, key: str) -> None:
    async def put(url: str, i: int) -> str:
        import yarl

        size = p.part_sizes[i]
        body = p.parts[i] if p.body_mode == "bytes" else file_chunks(p.part_paths[i])
        async with cl.aiohttp.put(yarl.URL(url, encoded=True), data=body, headers={"Content-Length": str(size)}) as r:
            text = await r.read()
            if r.status != 200:
                raise RuntimeError(f"presigned PUT part {i + 1}: HTTP {r.status}: {text[:300]!r}")
            return r.headers["ETag"]

    await _up_presigned(cl, p, bucket, key, put)


async def up_boto3_transfer(cl: Clients, p: Payload, bucket: str, key: str) -> None:
    import io

    from boto3.s3.transfer import TransferConfig

    tc = TransferConfig(
        multipart_threshold=p.part_size,
        multipart_chunksize=p.part_size,
        max_concurrency=cl.concurrency,
        use_threads=True,
    )
    loop = asyncio.get_running_loop()
    if p.body_mode == "file":
        fn = lambda: cl.boto.upload_file(str(p.whole_path), bucket, key, Config=tc)
    else:
        fn = lambda: cl.boto.upload_fileobj(io.BytesIO(p.data), bucket, key, Config=tc)
    await loop.run_in_executor(None, fn)


VARIANT_FUNCS: dict[str, Callable[[Clients, Payload, str, str], Awaitable[None]]] = {
    "aiobotocore": up_aiobotocore,
    "boto3-thread": up_boto3_thread,
    "boto3-thread-crc": up_boto3_thread_crc,
    "presigned-httpx": up_presigned_httpx,
    "presigned-aiohttp": up_presigned_aiohttp,
    "boto3-transfer": up_boto3_transfer,
}


# ----------------------------------------------------------------------------------------------------------------
# housekeeping on the server


class Housekeeper:
    def __init__(self, args: argparse.Namespace, boto: Any) -> None:
        self.args = args
        self.boto = boto
        self.gc_cmd: list[str] | None = None
        if not args.no_gc and args.ceph_conf and Path(args.ceph_conf).exists() and shutil.which("radosgw-admin"):
            self.gc_cmd = ["radosgw-admin", "-c", args.ceph_conf, "gc", "process", "--include-all"]

    def ensure_bucket(self, bucket: str) -> None:
        import botocore.exceptions

        try:
            self.boto.head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError:
            self.boto.create_bucket(Bucket=bucket)

    def clean(self, bucket: str) -> None:
        s3 = self.boto
        for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            with contextlib.suppress(Exception):
                s3.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
        for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=o["Key"])
        self.gc()

    def gc(self) -> None:
        if self.gc_cmd:
            subprocess.run(self.gc_cmd, check=False, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ----------------------------------------------------------------------------------------------------------------
# driver


async def warm_up(variant: str, cl: Clients, bucket: str) -> None:
    """Opens `concurrency` connections per client and imports everything: tiny parts, then abort."""
    small = Payload(size=cl.concurrency * 65536, part_size=65536, body_mode="bytes", workdir=Path("."))
    small.parts = [os.urandom(65536) for _ in range(cl.concurrency)]
    key = f"warmup-{variant}-{uuid.uuid4().hex[:8]}"
    loop = asyncio.get_running_loop()
    if variant == "boto3-transfer":
        await loop.run_in_executor(None, lambda: cl.boto.put_object(Bucket=bucket, Key=key, Body=b"x"))
        await loop.run_in_executor(None, lambda: cl.boto.delete_object(Bucket=bucket, Key=key))
        return
    if variant in ("aiobotocore", "presigned-httpx", "presigned-aiohttp"):
        mp = await cl.aio.create_multipart_upload(Bucket=bucket, Key=key)
    else:
        s3 = cl.boto if variant == "boto3-thread" else cl.boto_crc
        mp = await loop.run_in_executor(cl.executor, lambda: s3.create_multipart_upload(Bucket=bucket, Key=key))
    uid = mp["UploadId"]
    try:
        if variant == "aiobotocore":
            await gather_parts(
                small.n_parts,
                cl.concurrency,
                lambda i: _aio_part(cl, bucket, key, uid, i, small.parts[i]),
            )
        elif variant.startswith("boto3-thread"):
            s3 = cl.boto if variant == "boto3-thread" else cl.boto_crc

            async def one(i: int) -> str:
                return await loop.run_in_executor(cl.executor, _boto_upload_part, s3, small, bucket, key, uid, i)

            await gather_parts(small.n_parts, cl.concurrency, one)
        elif variant == "presigned-httpx":

            async def one(i: int) -> str:
                r = await cl.httpx.put(presign_part(cl, bucket, key, uid, i + 1), content=small.parts[i])
                r.raise_for_status()
                return r.headers["ETag"]

            await gather_parts(small.n_parts, cl.concurrency, one)
        elif variant == "presigned-aiohttp":
            import yarl

            async def one(i: int) -> str:
                url = yarl.URL(presign_part(cl, bucket, key, uid, i + 1), encoded=True)
                async with cl.aiohttp.put(url, data=small.parts[i]) as r:
                    await r.read()
                    r.raise_for_status()
                    return r.headers["ETag"]

            await gather_parts(small.n_parts, cl.concurrency, one)
    finally:
        if cl.aio is not None:
            await cl.aio.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=uid)
        else:
            await loop.run_in_executor(
                None, lambda: cl.boto.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=uid)
            )


async def _aio_part(cl: Clients, bucket: str, key: str, uid: str, i: int, body: bytes) -> str:
    r = await cl.aio.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=i + 1, Body=body)
    return r["ETag"]


async def measure_one(
    variant: str, cl: Clients, p: Payload, bucket: str, hk: Housekeeper, ceph_pids: dict[str, int]
) -> dict:
    key = f"{variant}-c{cl.concurrency}-{uuid.uuid4().hex[:8]}"
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, hk.gc)
    ticker = Ticker()
    ceph0 = {n: proc_cpu_s(pid) for n, pid in ceph_pids.items()}
    steal0 = steal_seconds()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = time.process_time()
    ticker.start()
    await asyncio.sleep(0.005)  # let the ticker get going
    t0 = time.perf_counter()
    err = None
    try:
        await VARIANT_FUNCS[variant](cl, p, bucket, key)
    except Exception as e:  # noqa: BLE001 - keep going, record the failure
        err = f"{type(e).__name__}: {e}"
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    loop_stats = await ticker.stop()
    steal = steal_seconds() - steal0
    ceph_cpu = {n: proc_cpu_s(pid) - ceph0[n] for n, pid in ceph_pids.items()}
    res: dict[str, Any] = {
        "variant": variant,
        "concurrency": cl.concurrency,
        "key": key,
        "wall_s": wall,
        "bytes": p.size,
        "mb_per_s": p.size / MB / wall,
        "cpu_s": cpu,
        "user_s": ru1.ru_utime - ru0.ru_utime,
        "sys_s": ru1.ru_stime - ru0.ru_stime,
        "cpu_s_per_gib": cpu * GiB / p.size,
        "minor_faults": ru1.ru_minflt - ru0.ru_minflt,
        "vol_ctx_switches": ru1.ru_nvcsw - ru0.ru_nvcsw,
        "invol_ctx_switches": ru1.ru_nivcsw - ru0.ru_nivcsw,
        "loop": loop_stats,
        "ceph_cpu_s": ceph_cpu,
        "ceph_cpu_s_per_gib": (sum(ceph_cpu.values()) * GiB / p.size) if ceph_cpu else float("nan"),
        "steal_s": steal,
        "error": err,
    }
    # verify and delete
    if err is None:
        try:
            h = await loop.run_in_executor(None, lambda: hk.boto.head_object(Bucket=bucket, Key=key))
            res["size_ok"] = h["ContentLength"] == p.size
            res["etag"] = h["ETag"]
            res["etag_ok"] = h["ETag"] == p.expected_etag
            if not (res["size_ok"] and res["etag_ok"]):
                res["error"] = f"verification failed: size {h['ContentLength']} etag {h['ETag']} != {p.expected_etag}"
        except Exception as e:  # noqa: BLE001
            res["error"] = f"verification failed: {type(e).__name__}: {e}"
    await loop.run_in_executor(None, lambda: hk.clean(bucket))
    res["osd_rss_mib"] = {n: proc_rss_mib(pid) for n, pid in ceph_pids.items() if n.startswith("ceph-osd")}
    return res


def median(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else float("nan")


def summarize(runs: list[dict], variants: list[str], concurrencies: list[int]) -> list[dict]:
    rows = []
    for c in concurrencies:
        for v in variants:
            rs = [r for r in runs if r["variant"] == v and r["concurrency"] == c and not r["error"]]
            failed = [r for r in runs if r["variant"] == v and r["concurrency"] == c and r["error"]]
            if not rs:
                rows.append({"concurrency": c, "variant": v, "n": 0, "failed": len(failed)})
                continue
            mbs = [r["mb_per_s"] for r in rs]
            rows.append(
                {
                    "concurrency": c,
                    "variant": v,
                    "n": len(rs),
                    "failed": len(failed),
                    "mb_per_s_median": median(mbs),
                    "mb_per_s_min": min(mbs),
                    "mb_per_s_max": max(mbs),
                    "cpu_s_per_gib_median": median([r["cpu_s_per_gib"] for r in rs]),
                    "user_s_per_gib_median": median([r["user_s"] * GiB / r["bytes"] for r in rs]),
                    "sys_s_per_gib_median": median([r["sys_s"] * GiB / r["bytes"] for r in rs]),
                    "ceph_cpu_s_per_gib_median": median([r["ceph_cpu_s_per_gib"] for r in rs]),
                    "loop_max_ms_median": median([r["loop"]["max_ms"] for r in rs]),
                    "loop_max_ms_worst": max(r["loop"]["max_ms"] for r in rs),
                    "loop_p99_ms_median": median([r["loop"]["p99_ms"] for r in rs]),
                    "loop_own_max_ms_median": median([r["loop"].get("own_max_ms", float("nan")) for r in rs]),
                    "loop_own_max_ms_worst": max(r["loop"].get("own_max_ms", float("nan")) for r in rs),
                    "loop_own_p99_ms_median": median([r["loop"].get("own_p99_ms", float("nan")) for r in rs]),
                    "loop_busy_share_median": median([r["loop"].get("busy_share", float("nan")) for r in rs]),
                    "loop_busy_max_ms_median": median([r["loop"]["busy_max_ms"] for r in rs]),
                    "loop_busy_max_ms_worst": max(r["loop"]["busy_max_ms"] for r in rs),
                    "steal_s_max": max(r["steal_s"] for r in rs),
                    "minor_faults_per_gib_median": median([r["minor_faults"] * GiB / r["bytes"] for r in rs]),
                }
            )
    return rows


def format_table(rows: list[dict], size: int, part: int, body: str, rounds: int) -> str:
    out = [
        (
            f"payload {size // MiB} MiB in {part // MiB} MiB parts, body from {body}, medians of {rounds} round(s); "
            "MB = 10^6 bytes; loop stall = longest gap between 1 ms ticks (median over rounds, worst round); "
            "own = gap minus the loop thread's run-queue wait (i.e. not caused by other processes); "
            "busy = loop-thread CPU within one gap"
        ),
        "",
        (
            "| conc | variant | MB/s median (min-max) | client CPU-s/GiB (usr+sys) | Ceph CPU-s/GiB "
            "| loop stall max ms (worst) | p99 ms | own stall max ms (worst) | own p99 ms | loop-thread busy max ms |"
        ),
        "|---:|---|---|---|---:|---|---:|---|---:|---:|",
    ]
    for r in rows:
        if not r["n"]:
            out.append(f"| {r['concurrency']} | {r['variant']} | FAILED ({r['failed']}) | | | | | | | |")
            continue
        fail = f" ({r['failed']} failed)" if r["failed"] else ""
        out.append(
            f"| {r['concurrency']} | {r['variant']} | {r['mb_per_s_median']:.0f} "
            f"({r['mb_per_s_min']:.0f}-{r['mb_per_s_max']:.0f}){fail} "
            f"| {r['cpu_s_per_gib_median']:.2f} ({r['user_s_per_gib_median']:.2f}+{r['sys_s_per_gib_median']:.2f}) "
            f"| {r['ceph_cpu_s_per_gib_median']:.2f} "
            f"| {r['loop_max_ms_median']:.1f} ({r['loop_max_ms_worst']:.1f}) "
            f"| {r['loop_p99_ms_median']:.1f} "
            f"| {r['loop_own_max_ms_median']:.1f} ({r['loop_own_max_ms_worst']:.1f}) "
            f"| {r['loop_own_p99_ms_median']:.1f} "
            f"| {r['loop_busy_max_ms_median']:.1f} |"
        )
    return "\n".join(out)


async def main_async(args: argparse.Namespace) -> int:
    variants = ALL_VARIANTS if args.variants == "all" else [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANT_FUNCS:
            sys.exit(f"unknown variant {v!r}; known: {', '.join(ALL_VARIANTS)}")
    concurrencies = [int(x) for x in str(args.concurrency).split(",")]
    size = int(args.size_mib * MiB)
    part = int(args.part_mib * MiB)
    if part < 5 * MiB and size > part:
        sys.exit("--part-mib must be >= 5 (S3 minimum part size) unless there is only one part")

    workdir = Path(tempfile.mkdtemp(prefix="s3clients-", dir=args.work_dir))
    ceph_pids = find_ceph_pids(args.ceph_conf if args.ceph_conf and Path(args.ceph_conf).exists() else None)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {
            "endpoint": args.endpoint,
            "size_bytes": size,
            "part_bytes": part,
            "body": args.body,
            "concurrency": concurrencies,
            "rounds": args.rounds,
            "variants": variants,
            "loop": args.loop,
            "pool": args.pool,
            "nice": args.nice,
            "malloc_tuned": args.malloc_tuned,
            "chunk_bytes": FILE_READ_CHUNK,
        },
        "env": env_info(),
        "ceph_pids": ceph_pids,
        "runs": [],
    }
    try:
        t = time.perf_counter()
        p = make_payload(size, part, args.body, workdir)
        print(f"payload: {size // MiB} MiB, {p.n_parts} parts, body from {args.body} ({time.perf_counter() - t:.1f} s)")
        async with contextlib.AsyncExitStack() as stack:
            per_conc: dict[int, Clients] = {}
            hk = None
            for c in concurrencies:
                per_conc[c] = await open_clients(args, c, variants, stack)
                if hk is None:
                    hk = Housekeeper(args, per_conc[c].boto)
                    hk.ensure_bucket(args.bucket)
                    hk.clean(args.bucket)
                for v in variants:
                    await warm_up(v, per_conc[c], args.bucket)
            assert hk is not None
            if not hk.gc_cmd:
                print("note: no RGW garbage collection (radosgw-admin/ceph.conf not found or --no-gc)")
            # idle baseline of the ticker
            tk = Ticker()
            tk.start()
            await asyncio.sleep(1.0)
            results["idle_loop"] = await tk.stop()
            print(
                f"idle ticker: max {results['idle_loop']['max_ms']:.2f} ms, p99 {results['idle_loop']['p99_ms']:.2f} ms"
            )
            k = 0
            for rnd in range(1, args.rounds + 1):
                for c in concurrencies:
                    order = variants[k % len(variants) :] + variants[: k % len(variants)]
                    k += 1
                    for v in order:
                        r = await measure_one(v, per_conc[c], p, args.bucket, hk, ceph_pids)
                        r["round"] = rnd
                        results["runs"].append(r)
                        status = r["error"] or "ok"
                        print(
                            f"round {rnd} c={c:<2} {v:<18} {r['mb_per_s']:7.0f} MB/s  cpu {r['cpu_s']:5.2f} s "
                            f"({r['cpu_s_per_gib']:.2f}/GiB)  ceph {sum(r['ceph_cpu_s'].values()):5.2f} s  "
                            f"loop max {r['loop']['max_ms']:6.1f} p99 {r['loop']['p99_ms']:5.1f} own max {r['loop'].get('own_max_ms', 0):5.1f} "
                            f"busy {r['loop']['busy_max_ms']:5.1f} ms  "
                            f"steal {r['steal_s']:.2f}  {status}",
                            flush=True,
                        )
            hk.clean(args.bucket)
            with contextlib.suppress(Exception):
                hk.boto.delete_bucket(Bucket=args.bucket)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rows = summarize(results["runs"], variants, concurrencies)
    results["summary"] = rows
    table = format_table(rows, size, part, args.body, args.rounds)
    results["table_md"] = table
    print()
    print(table)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwrote {out}")
    return 1 if any(r["error"] for r in results["runs"]) else 0


def env_info() -> dict:
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()}
    for mod in ("aiobotocore", "botocore", "boto3", "s3transfer", "httpx", "aiohttp", "uvloop", "awscrt"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "?")
        except ImportError:
            info[mod] = None
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", default="http://127.0.0.1:7480")
    ap.add_argument("--access-key", default=os.environ.get("AWS_ACCESS_KEY_ID", "TUSACCESS"))
    ap.add_argument("--secret-key", default=os.environ.get("AWS_SECRET_ACCESS_KEY", "TUSSECRET"))
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--bucket", default="pytusd-bench-s3clients")
    ap.add_argument("--size-mib", type=float, default=256, help="payload per upload (keep <= 300 on a 1 GiB memstore)")
    ap.add_argument("--part-mib", type=float, default=16)
    ap.add_argument("--concurrency", default="4", help="parallel part uploads; a comma list runs each (e.g. 4,10)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list or 'all' of {ALL_VARIANTS}")
    ap.add_argument("--body", choices=["file", "bytes"], default="file", help="part bodies from temp files or bytes")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="pytusd runs on uvloop")
    ap.add_argument(
        "--pool", type=int, default=0, help="max_pool_connections for botocore clients (default: = concurrency)"
    )
    ap.add_argument("--ceph-conf", default="/tmp/ceph/ceph.conf", help="for `radosgw-admin gc process`")
    ap.add_argument("--no-gc", action="store_true")
    ap.add_argument("--work-dir", default=None, help="where the temp part files go (default: the temp directory)")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "s3_clients.json"))
    ap.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="leave glibc malloc's mmap/trim thresholds alone (pytusd's server raises them, so by default this does)",
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=None,
        help="set this process's nice value (e.g. -10, needs root) so that the Ceph daemons on the same CPUs "
        "cannot preempt the event loop; isolates the stalls the client itself causes",
    )
    ap.add_argument(
        "--chunk-kib", type=int, default=1024, help="read size when the presigned variants stream a part file"
    )
    args = ap.parse_args()
    global FILE_READ_CHUNK
    FILE_READ_CHUNK = args.chunk_kib * 1024
    if args.nice is not None:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    args.malloc_tuned = False
    if not args.no_malloc_tuning:
        try:
            from pytusd.server import tune_malloc  # what the pytusd process the store runs in does
        except ImportError:
            print("note: pytusd not importable, glibc malloc left untuned", file=sys.stderr)
        else:
            args.malloc_tuned = tune_malloc()
    if args.size_mib > 300:
        print("warning: > 300 MiB per upload may not fit a 1 GiB memstore", file=sys.stderr)
    if args.loop == "uvloop":
        import uvloop

        return uvloop.run(main_async(args))
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
