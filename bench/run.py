#!/usr/bin/env python3
"""pytusd benchmark: pytusd against @tus/server (Node) on the same machine, in the same run.

Usually started through ``scripts/bench`` (which sets up the venv and the Node peer first)::

    scripts/bench                              # scenario upload-1g: 1 GiB, 3 rounds
    scripts/bench upload-1g --size 64MiB --rounds 1
    scripts/bench --list

Every measured upload gets a freshly started server process with its own empty upload directory; servers are
alternated round by round, and the report gives medians. The client is a raw-socket HTTP/1.1 client sending from
one preallocated buffer so that it is not the bottleneck. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import mmap
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
PEERS_DIR = os.path.join(BENCH_DIR, "peers")
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
VENV_BIN = os.path.join(REPO_DIR, ".venv", "bin")

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1_000_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET_RATIO = 2.0  # "pytusd >= 2x @tus/server throughput"


class BenchError(Exception):
    """Something broke: a server did not start, rejected an upload, or stored the wrong bytes."""


# --------------------------------------------------------------------------------------------------------------
# Sizes


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'1GiB', '64MiB', '16M', '1048576' -> bytes (K/M/G/T are binary, KB/MB/GB with no 'i' are decimal)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 64MiB, 1GiB, 1048576)")
    number, unit, binary = m.groups()
    unit = unit.lower()
    plain = text.strip().lower()
    # "16M" and "16MiB" are binary; "16MB" is decimal.
    decimal = bool(unit) and not binary and plain.endswith("b")
    base = 1000 if decimal else 1024
    power = " kmgt".index(unit) if unit else 0
    value = int(float(number) * base**power)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def fmt_size(n: int) -> str:
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"


# --------------------------------------------------------------------------------------------------------------
# A minimal HTTP/1.1 client on a raw socket (keep-alive, Content-Length request bodies from a memoryview)


@dataclasses.dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


class RawHTTPClient:
    """One keep-alive HTTP/1.1 connection; reconnects when the server asks to close."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._buf = bytearray()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf.clear()
        self.sock = sock
        return sock

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None
                self._buf.clear()

    def __enter__(self) -> RawHTTPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: memoryview | None = None
    ) -> Response:
        sock = self.sock or self._connect()
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers]
        lines.append(f"Content-Length: {len(body) if body is not None else 0}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            sock.sendall(head)
            if body is not None and len(body):
                sock.sendall(body)
        except OSError as exc:
            # The server may have answered (an error) and closed before taking the whole body: show its answer.
            try:
                early = self._read_response(method)
            except Exception:
                early = None
            self.close()
            detail = f"; server said {early.status} {early.body[:200]!r}" if early else ""
            raise BenchError(f"{method} {target}: sending failed: {exc}{detail}") from exc
        resp = self._read_response(method)
        if (resp.header("connection") or "").lower() == "close":
            self.close()
        return resp

    # -- response parsing --

    def _fill(self) -> None:
        assert self.sock is not None
        data = self.sock.recv(65536)
        if not data:
            raise BenchError("server closed the connection mid-response")
        self._buf += data

    def _read_until(self, marker: bytes) -> bytes:
        while True:
            i = self._buf.find(marker)
            if i >= 0:
                out = bytes(self._buf[:i])
                del self._buf[: i + len(marker)]
                return out
            self._fill()

    def _read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _read_response(self, method: str) -> Response:
        while True:
            head = self._read_until(b"\r\n\r\n").decode("latin-1")
            status_line, *header_lines = head.split("\r\n")
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/"):
                raise BenchError(f"bad status line {status_line!r}")
            status = int(parts[1])
            reason = parts[2] if len(parts) > 2 else ""
            headers: dict[str, str] = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                key = name.strip().lower()
                value = value.strip()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
            if 100 <= status < 200:
                continue  # interim response (we never send Expect, but be lenient)
            break
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size_line = self._read_until(b"\r\n").decode("latin-1")
                size = int(size_line.split(";", 1)[0].strip(), 16)
                if size == 0:
                    while self._read_until(b"\r\n"):  # trailers, up to the empty line
                        pass
                    break
                chunks.append(self._read_exact(size))
                self._read_exact(2)
            body = b"".join(chunks)
        elif "content-length" in headers:
            body = self._read_exact(int(headers["content-length"]))
        else:  # delimited by close
            assert self.sock is not None
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                self._buf += data
            body = bytes(self._buf)
            self._buf.clear()
            self.close()
        return Response(status, reason, headers, body)


# --------------------------------------------------------------------------------------------------------------
# Process measurements from /proc


def _stat_fields(pid: int | str) -> list[bytes] | None:
    """/proc/<pid>/stat from field 3 (state) on, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()


def _proc_children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(entry)) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    children = _proc_children_map()
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


@dataclasses.dataclass
class ProcCounters:
    cpu_s: float  # utime + stime (+ reaped children's)
    user_s: float
    sys_s: float
    minflt: int
    majflt: int

    def __sub__(self, other: ProcCounters) -> ProcCounters:
        return ProcCounters(
            self.cpu_s - other.cpu_s,
            self.user_s - other.user_s,
            self.sys_s - other.sys_s,
            self.minflt - other.minflt,
            self.majflt - other.majflt,
        )


def proc_counters(pid: int) -> ProcCounters:
    """CPU time and page faults of ``pid`` and its live descendants, plus the children they have already reaped."""
    user = system = minflt = majflt = 0
    for p in process_tree(pid):
        fields = _stat_fields(p)
        if fields is None:
            continue
        # fields[0] is field 3 (state): minflt=10, cminflt=11, majflt=12, cmajflt=13,
        # utime=14, stime=15, cutime=16, cstime=17
        minflt += int(fields[7]) + int(fields[8])
        majflt += int(fields[9]) + int(fields[10])
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
    return ProcCounters((user + system) / CLK_TCK, user / CLK_TCK, system / CLK_TCK, minflt, majflt)


def steal_seconds() -> float:
    """Machine-wide CPU time stolen by the hypervisor so far (all vCPUs): a noisy-neighbour indicator."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def _status_kib(pid: int, key: str) -> int:
    return _status_line(f"/proc/{pid}/status", key)


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB, summed over the process tree (one process for both servers measured here)."""
    tree = process_tree(pid)
    return sum(_status_kib(p, "VmRSS") for p in tree), sum(_status_kib(p, "VmHWM") for p in tree)


# --------------------------------------------------------------------------------------------------------------
# Servers


@dataclasses.dataclass(frozen=True)
class ServerSpec:
    name: str
    label: str
    argv: Callable[[int, str], list[str]]  # (port, upload_dir) -> command
    base_path: str = "/files/"
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    def stored_path(self, upload_dir: str, upload_id: str) -> str:
        # tusd, pytusd and @tus/file-store all keep the bytes in <dir>/<id> (metadata in <id>.info / <id>.json).
        return os.path.join(upload_dir, upload_id)


SERVERS: dict[str, ServerSpec] = {
    "pytusd": ServerSpec(
        name="pytusd",
        label="pytusd",
        argv=lambda port, d: [
            os.path.join(VENV_BIN, "pytusd"),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--upload-dir", d,
            "--verbose=false",
        ],
    ),
    "tus-node": ServerSpec(
        name="tus-node",
        label="@tus/server",
        argv=lambda port, d: ["node", os.path.join(PEERS_DIR, "tus-node-server.mjs"), d, str(port)],
    ),
    # Opt-in: the ceiling of this machine (bare asyncio Protocol writing in data_received; not a real server).
    "raw-sink": ServerSpec(
        name="raw-sink",
        label="raw sink",
        argv=lambda port, d: [os.path.join(VENV_BIN, "python"), os.path.join(PEERS_DIR, "raw_sink.py"), d, str(port)],
    ),
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """A server subprocess, stopped by its own PID (SIGTERM, then SIGKILL)."""

    def __init__(self, spec: ServerSpec, upload_dir: str, log_path: str, start_timeout: float) -> None:
        self.spec = spec
        self.upload_dir = upload_dir
        self.log_path = log_path
        self.port = free_port()
        self.argv = spec.argv(self.port, upload_dir)
        env = dict(os.environ, **spec.env)
        self._log = open(log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=upload_dir,
                start_new_session=True,  # a Ctrl-C in the terminal reaches only us; we stop the server ourselves
            )
        except OSError as exc:
            self._log.close()
            raise BenchError(f"cannot start {spec.label}: {exc}") from exc
        _LIVE.add(self)
        try:
            self._wait_listening(start_timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.spec.label} exited with {self.proc.returncode} before listening:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"{self.spec.label} did not listen on port {self.port} in {timeout}s")
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        self._log.close()
        _LIVE.discard(self)
        return self.proc.returncode


_LIVE: set[RunningServer] = set()


def stop_all_servers() -> None:
    for server in list(_LIVE):
        server.stop(timeout=5.0)


# --------------------------------------------------------------------------------------------------------------
# One tus upload


TUS = ("Tus-Resumable", "1.0.0")


def _upload_id(location: str) -> str:
    path = urllib.parse.urlsplit(location).path
    upload_id = path.rstrip("/").rsplit("/", 1)[-1]
    if not upload_id:
        raise BenchError(f"no upload ID in Location {location!r}")
    return upload_id


def create_upload(client: RawHTTPClient, base_path: str, size: int) -> tuple[str, str]:
    """POST (creation extension). Returns (request target for PATCH, upload id). No Upload-Metadata is sent:
    @tus/server rejects an empty one."""
    resp = client.request("POST", base_path, [TUS, ("Upload-Length", str(size))])
    if resp.status != 201:
        raise BenchError(f"POST {base_path}: {resp.status} {resp.reason} {resp.body[:300]!r}")
    location = resp.header("location")
    if not location:
        raise BenchError("POST: 201 without Location")
    # Absolute (http://host:port/files/id) or relative (/files/id, files/id): resolve against the POST URL.
    base_url = f"http://{client.host}:{client.port}{base_path}"
    parts = urllib.parse.urlsplit(urllib.parse.urljoin(base_url, location))
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return target, _upload_id(location)


def patch_all(client: RawHTTPClient, target: str, data: memoryview, patch_size: int) -> int:
    """PATCH ``data`` in requests of ``patch_size`` bytes (one request if patch_size >= len(data))."""
    offset, size, requests = 0, len(data), 0
    while offset < size:
        n = min(patch_size, size - offset)
        resp = client.request(
            "PATCH",
            target,
            [TUS, ("Upload-Offset", str(offset)), ("Content-Type", "application/offset+octet-stream")],
            data[offset : offset + n],
        )
        if resp.status != 204:
            raise BenchError(f"PATCH at {offset}: {resp.status} {resp.reason} {resp.body[:300]!r}")
        new_offset = int(resp.header("upload-offset") or -1)
        if new_offset != offset + n:
            raise BenchError(f"PATCH at {offset}: Upload-Offset {new_offset}, expected {offset + n}")
        offset = new_offset
        requests += 1
    return requests


def prefault_memory(n: int) -> float:
    """Touch ``n`` bytes of fresh anonymous memory, then give it back. Returns the seconds it took.

    On VMs whose balloon driver has free page reporting (Firecracker, QEMU with free-page-reporting), memory the
    guest has freed is handed back to the host about 2 s later, and the next first touch of it costs a host page
    fault: page-cache writes into such memory run at ~250-450 MB/s instead of 2-5 GB/s. Every measured upload
    writes ``size`` bytes of new page cache right after a pause (server start-up, the previous upload's file
    deleted), so without this the benchmark measures the hypervisor. Populating the memory just before the PATCH
    phase and releasing it puts host-backed pages at the head of the free lists, where the server's page cache
    takes them from (see bench/README.md)."""
    # Never push the machine into reclaim for this: at most half of what is available.
    n = min(n, _status_line("/proc/meminfo", "MemAvailable") * KiB // 2)
    if n <= 0:
        return 0.0
    t0 = time.perf_counter()
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    populate = getattr(mmap, "MAP_POPULATE", 0)
    m = mmap.mmap(-1, n, flags=flags | populate)
    try:
        if not populate:
            for off in range(0, n, mmap.PAGESIZE):
                m[off] = 1
    finally:
        m.close()
    return time.perf_counter() - t0


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


@dataclasses.dataclass
class Ctx:
    args: argparse.Namespace
    work_dir: str
    data: memoryview
    data_sha256: str


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
            steal0 = steal_seconds()
            client_cpu0 = time.process_time()
            t0 = time.perf_counter()
            requests = patch_all(client, target, ctx.data, patch_size)
            wall = time.perf_counter() - t0
            client_cpu = time.process_time() - client_cpu0
            steal = steal_seconds() - steal0
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
        "client_cpu_s": client_cpu,
        "rss_idle_mb": rss_idle_kib * KiB / MB,
        "rss_end_mb": rss_kib * KiB / MB,
        "peak_rss_mb": hwm_kib * KiB / MB,
        "stored_size_ok": True,
        "sha256_ok": sha_ok,
        "argv": server.argv,
    }


# --------------------------------------------------------------------------------------------------------------
# Scenarios


def scenario_upload(ctx: Ctx) -> dict[str, Any]:
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

    results = []
    slot = 0
    for r in range(1, args.rounds + 1):
        for variant in chosen:
            order = specs[slot % len(specs) :] + specs[: slot % len(specs)]
            slot += 1
            for spec in order:
                res = measure_upload(ctx, spec, variant, variants[variant], r, verify_sha=(r == 1 and args.sha256))
                results.append(res)
                print(
                    f"  round {r}/{args.rounds} {variant:<14} {spec.label:<12} {res['mb_per_s']:8.0f} MB/s"
                    f"  cpu {res['server_cpu_s']:6.2f} s  peak rss {res['peak_rss_mb']:6.0f} MB"
                    f"  (usr {res['server_user_s']:.2f} sys {res['server_sys_s']:.2f}, {res['server_minflt']} minflt;"
                    f" client cpu {res['client_cpu_s']:.2f} s; steal {res['steal_s']:.2f} s)",
                    flush=True,
                )
    return {"variants": {v: variants[v] for v in chosen}, "uploads": results}


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    help: str
    run: Callable[[Ctx], dict[str, Any]]
    default_size: int


SCENARIOS: dict[str, Scenario] = {
    "upload-1g": Scenario(
        "upload-1g",
        "one large upload per server per round: POST + 16 MiB PATCHes, and POST + one PATCH (default 1 GiB)",
        scenario_upload,
        GiB,
    ),
}


# --------------------------------------------------------------------------------------------------------------
# Summary and report


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
    for v, entry in summary.items():
        if "ratio_pytusd_over_tus_node" in entry:
            ratio = entry["ratio_pytusd_over_tus_node"]
            verdict = "PASS" if entry["target_met"] else "FAIL"
            out.append(
                f"{v}: pytusd / @tus/server throughput = {ratio:.2f}x  -> {verdict} (target >= {TARGET_RATIO:g}x)"
            )
        if "ratio_pytusd_over_raw_sink" in entry:
            out.append(f"{v}: pytusd / raw sink throughput = {entry['ratio_pytusd_over_raw_sink']:.2f}x")
    return out


# --------------------------------------------------------------------------------------------------------------
# Machine description


def _run(cmd: list[str], cwd: str | None = None) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def mount_of(path: str) -> dict[str, str]:
    """Device and filesystem type of the mount holding ``path`` (longest matching mount point)."""
    path = os.path.realpath(path)
    best = {"mount_point": "", "device": "", "fstype": ""}
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype, *_ = line.split()
                mnt = mnt.replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best["mount_point"]):
                    best = {"mount_point": mnt, "device": dev, "fstype": fstype}
    except OSError:
        pass
    return best


def machine_info(work_dir: str) -> dict[str, Any]:
    mem_kib = _status_line("/proc/meminfo", "MemTotal")
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    mount = mount_of(work_dir)
    disk = shutil.disk_usage(work_dir)
    rotational = None  # as the kernel reports it; virtio disks often claim 1 whatever backs them
    devname = os.path.basename(mount["device"])
    try:
        with open(f"/sys/block/{devname}/queue/rotational") as f:
            rotational = int(f.read().strip())
    except (OSError, ValueError):
        pass
    py = os.path.join(VENV_BIN, "python")
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_gib": round(mem_kib / MiB, 1) if mem_kib else None,
        "kernel": platform.release(),
        "work_dir": work_dir,
        "disk": {**mount, "rotational": rotational, "size_gb": round(disk.total / 1e9), "free_gb": round(disk.free / 1e9)},
        # Free page reporting (virtio balloon): freed guest memory goes back to the host; see prefault_memory().
        "free_page_reporting": os.path.isdir("/sys/module/page_reporting"),
        "python": platform.python_version(),
        "node": _run(["node", "--version"]),
        "pytusd": _run([py, "-c", "import pytusd; print(pytusd.__version__)"]),
        "tus_server": _pkg_version("@tus/server"),
        "tus_file_store": _pkg_version("@tus/file-store"),
        "git_commit": _run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR),
        "git_dirty_src": bool(_run(["git", "status", "--porcelain", "--", "src"], cwd=REPO_DIR)),
    }


def _status_line(path: str, key: str) -> int:
    """The number on the ``key:`` line of a /proc file such as status or meminfo (kB), 0 when absent."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pkg_version(name: str) -> str:
    try:
        with open(os.path.join(PEERS_DIR, "node_modules", *name.split("/"), "package.json")) as f:
            return json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        return ""


# --------------------------------------------------------------------------------------------------------------
# Main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark pytusd against @tus/server (Node) on this machine; both measured in the same run.",
    )
    p.add_argument("scenario", nargs="?", default="upload-1g", help="scenario name (default upload-1g; --list)")
    p.add_argument("--list", action="store_true", help="list scenarios and exit")
    p.add_argument("--size", type=parse_size, default=None, help="upload size (default 1GiB; e.g. 64MiB)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    p.add_argument("--patch-size", type=parse_size, default=16 * MiB, help="PATCH size of variant a (default 16MiB)")
    p.add_argument(
        "--variants", default="", help="comma-separated subset: patch-16MiB (a, chunked), patch-single (b, single)"
    )
    p.add_argument(
        "--servers", default="pytusd,tus-node", help="comma-separated subset of: " + ", ".join(SERVERS)
    )
    p.add_argument("--work-dir", default=tempfile.gettempdir(), help="where upload dirs go (default: the temp dir)")
    p.add_argument("--warmup-size", type=parse_size, default=8 * MiB, help="warm-up upload per server (default 8MiB)")
    p.add_argument("--no-warmup", dest="warmup_size", action="store_const", const=0, help="skip the warm-up upload")
    p.add_argument(
        "--prefault",
        type=parse_size,
        default=None,
        help="memory to populate and release right before each PATCH phase (default size+512MiB; see README)",
    )
    p.add_argument("--no-prefault", dest="prefault", action="store_const", const=0, help="do not prefault memory")
    p.add_argument("--no-sha256", dest="sha256", action="store_false", help="skip the sha256 check in round 1")
    p.add_argument("--settle", type=float, default=1.0, help="seconds to pause between uploads (default 1)")
    p.add_argument("--timeout", type=float, default=600.0, help="socket timeout per request in seconds")
    p.add_argument("--start-timeout", type=float, default=30.0, help="seconds to wait for a server to listen")
    p.add_argument("--no-json", dest="json", action="store_false", help="do not write bench/results/<time>.json")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:<12} {s.help}")
        return 0
    scenario = SCENARIOS.get(args.scenario)
    if scenario is None:
        print(f"unknown scenario {args.scenario!r}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    args.servers = [s for s in args.servers.split(",") if s]
    for s in args.servers:
        if s not in SERVERS:
            print(f"unknown server {s!r}; known: {', '.join(SERVERS)}", file=sys.stderr)
            return 2
    if args.rounds < 1:
        print("--rounds must be >= 1", file=sys.stderr)
        return 2
    size = args.size = args.size or scenario.default_size

    base = os.path.realpath(args.work_dir)
    os.makedirs(base, exist_ok=True)
    need = size + 2 * args.warmup_size + 256 * MiB
    if shutil.disk_usage(base).free < need:
        print(f"not enough free space in {base}: need about {need / GiB:.1f} GiB", file=sys.stderr)
        return 2
    work_dir = tempfile.mkdtemp(prefix="pytusd-bench-", dir=base)
    machine = machine_info(work_dir)
    if machine["disk"]["fstype"] in ("tmpfs", "ramfs"):
        print(f"warning: {base} is {machine['disk']['fstype']}: this measures memory, not a disk (see --work-dir)")

    # SIGTERM/SIGHUP to the benchmark: unwind through the finally blocks that stop the servers.
    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    started = dt.datetime.now(dt.timezone.utc)
    print(
        f"scenario {scenario.name}: {fmt_size(size)} x {args.rounds} round(s), servers {', '.join(args.servers)};"
        f" {machine['nproc']} cores, {machine['mem_total_gib']} GiB RAM,"
        f" upload dirs in {work_dir} ({machine['disk']['fstype']} on {machine['disk']['device']})",
        flush=True,
    )
    try:
        t0 = time.perf_counter()
        data = memoryview(os.urandom(size))
        data_sha = hashlib.sha256(data).hexdigest()
        print(f"  {fmt_size(size)} of random bytes ready in {time.perf_counter() - t0:.1f} s", flush=True)
        ctx = Ctx(args=args, work_dir=work_dir, data=data, data_sha256=data_sha)
        outcome = scenario.run(ctx)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        print(f"(server logs kept in {work_dir})", file=sys.stderr)
        return 1
    finally:
        stop_all_servers()
    shutil.rmtree(work_dir, ignore_errors=True)

    summary = summarize(outcome["uploads"], args.servers, list(outcome["variants"]))
    lines = print_table(summary, args.rounds)
    print()
    print("\n".join(lines))

    if args.json:
        os.makedirs(RESULTS_DIR, exist_ok=True)
        stamp = started.strftime("%Y%m%dT%H%M%SZ")
        path = os.path.join(RESULTS_DIR, f"{stamp}.json")
        report = {
            "scenario": scenario.name,
            "started_utc": started.isoformat(timespec="seconds"),
            "size": size,
            "rounds": args.rounds,
            "target": f"pytusd >= {TARGET_RATIO:g}x @tus/server throughput",
            "options": {k: v for k, v in vars(args).items() if k not in ("list",)},
            "machine": machine,
            "variants": outcome["variants"],
            "summary": summary,
            "uploads": outcome["uploads"],
            "table": lines,
        }
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"\nresults written to {os.path.relpath(path, os.getcwd())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
