#!/usr/bin/env python3
"""pytusd benchmark: pytusd against tusd (Go) and @tus/server (Node) on the same machine, in the same run.

Usually started through ``scripts/bench`` (which sets up the venv, the Node peer and tusd first)::

    scripts/bench                              # scenario upload-1g: 1 GiB, 3 rounds
    scripts/bench upload-1g --size 64MiB --rounds 1
    scripts/bench --list

Every measured upload gets a freshly started server process with its own empty upload directory; servers are
alternated round by round, and the report gives medians. The client is a raw-socket HTTP/1.1 client sending from
one preallocated buffer so that it is not the bottleneck. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import mmap
import os
import platform
import re
import shlex
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
from pathlib import Path
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
PEERS_DIR = os.path.join(BENCH_DIR, "peers")
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
VENV_BIN = os.path.join(REPO_DIR, ".venv", "bin")
# tusd, built by scripts/bench with `go install` (bench/README.md, "Peers"); absent when Go is not installed.
TUSD_BIN = os.path.join(PEERS_DIR, "go", "bin", "tusd")

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1_000_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The targets of issue 9 ("Performance: ahead of every peer, close to what the machine can do").
TARGET_RATIO = 3.0  # scenario 1: pytusd >= 3x @tus/server throughput
TARGET_RAW_SINK = 0.7  # scenario 1: pytusd >= 70% of the raw sink's throughput
TARGET_SMALL_RATIO = 1.5  # scenario 2: pytusd >= 1.5x @tus/server requests/s, with a lower p99
TARGET_TUSD_RATIO = 1.0  # scenarios 1 and 2: "ahead of every peer": pytusd >= tusd's MB/s and req/s (lower p99)
TARGET_SLOW_RSS_MB = 300.0  # scenario 3: pytusd under 300 MB RSS with 1,000 uploads open, no request failing
TARGET_S3_RATIO = 0.8  # scenario 4: pytusd >= 0.8x boto3's own throughput to the same gateway
TARGET_SCALING = 0.8  # scenario 5: --workers N >= 0.8 x N x one worker's throughput ("close to linear"), N <= cores


class BenchError(Exception):
    """Something broke: a server did not start, rejected an upload, or stored the wrong bytes."""


class ScenarioSkipped(Exception):
    """A scenario cannot run on this machine (e.g. Ceph is not installed): reported, not a failure."""


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


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent so far (user, nice, system, irq, softirq; all CPUs)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:8]]
        return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / CLK_TCK
    except (OSError, ValueError):
        return 0.0


QUIET = {"cores": 0.25, "wait_s": 45.0}  # set from --quiet-cores / --wait-quiet


def wait_for_quiet() -> dict[str, float]:
    """Before a measurement: wait until the rest of the machine (other people's test suites, say) uses less than
    QUIET["cores"] for a second, at most QUIET["wait_s"] seconds. Returns the wait and the last load seen."""
    t0 = time.monotonic()
    told = False
    while True:
        b0 = machine_busy_seconds()
        time.sleep(0.5)
        load = (machine_busy_seconds() - b0) / 0.5
        waited = time.monotonic() - t0
        if load < QUIET["cores"] or waited >= QUIET["wait_s"]:
            if told:
                print(f"    (waited {waited:.0f} s; other processes now use {load:.2f} cores)", flush=True)
            return {"quiet_wait_s": waited, "load_before_cores": load}
        if not told:
            print(f"    waiting for the machine to quieten: other processes use {load:.2f} cores", flush=True)
            told = True


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
    ready_log: str = ""  # wait until the server's log has this line, too (pytusd --workers: "N workers ready")

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
    # tusd (Go): its file store with its defaults (GOMAXPROCS = every core). -verbose=false drops its debug lines;
    # it has no quieter level, so it still logs a few info lines per request (to its log file in the work dir).
    "tusd": ServerSpec(
        name="tusd",
        label="tusd",
        argv=lambda port, d: [
            TUSD_BIN,
            "-host", "127.0.0.1",
            "-port", str(port),
            "-upload-dir", d,
            "-base-path", "/files/",
            "-verbose=false",
        ],
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
        os.makedirs(upload_dir, exist_ok=True)
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
                    if not self.spec.ready_log or self.spec.ready_log in self.log_tail(1 << 20):
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
    small_dir: str = ""  # upload dirs of the many-small-uploads loads (scenarios 2 and 5), see --small-work-dir
    _random: memoryview | None = None
    _sha: dict[int, str] = dataclasses.field(default_factory=dict)

    def random(self, size: int) -> memoryview:
        """``size`` random bytes (a prefix of one buffer made once, at the largest size asked for)."""
        if self._random is None or len(self._random) < size:
            t0 = time.perf_counter()
            self._random = memoryview(os.urandom(size))
            self._sha.clear()
            print(f"  {fmt_size(size)} of random bytes ready in {time.perf_counter() - t0:.1f} s", flush=True)
        return self._random[:size]

    def sha256(self, size: int) -> str:
        if size not in self._sha:
            self._sha[size] = hashlib.sha256(self.random(size)).hexdigest()
        return self._sha[size]

    @property
    def data(self) -> memoryview:
        """Scenario 1's upload: --size bytes."""
        return self.random(self.args.size)

    @property
    def data_sha256(self) -> str:
        return self.sha256(self.args.size)


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


def _fs_of(path: str) -> str:
    m = mount_of(path)
    return f"{m['fstype']} ({m['mount_point']})"


def rotate(items: Sequence[Any], slot: int) -> list[Any]:
    """``items`` starting at position ``slot`` (mod len): who goes first changes every time."""
    k = slot % len(items)
    return list(items[k:]) + list(items[:k])


def median_of(rows: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")


def pytusd_spec(
    name: str, label: str, *extra: str, env: dict[str, str] | None = None, base: str = "pytusd"
) -> ServerSpec:
    """pytusd with the bench's usual flags plus ``extra`` (``--workers N`` waits for all workers to be ready);
    ``base``: the install, ``pytusd`` (this checkout's .venv) or ``pytusd-baseline`` (--baseline-python)."""
    ready = ""
    if "--workers" in extra:
        n = int(extra[list(extra).index("--workers") + 1])
        ready = f"{n} workers ready" if n > 1 else ""
    return ServerSpec(
        name=name,
        label=label,
        argv=lambda port, d: SERVERS[base].argv(port, d) + list(extra),
        env={**SERVERS[base].env, **(env or {})},
        ready_log=ready,
    )


# Opt-in, for every scenario: pytusd of another install, started as `<python> -m pytusd` with the flags of the
# `pytusd` spec (--pytusd-args included): before and after a refactor in the same run. The python comes from
# --baseline-python or $PYTUSD_BASELINE_PYTHON; scripts/bench-baseline builds one from a git ref (README).
BASELINE = {"python": os.environ.get("PYTUSD_BASELINE_PYTHON", "")}
SERVERS["pytusd-baseline"] = ServerSpec(
    name="pytusd-baseline",
    label="pytusd (baseline)",
    argv=lambda port, d: [BASELINE["python"], "-m", "pytusd"] + SERVERS["pytusd"].argv(port, d)[1:],
)
PYTUSD_INSTALLS = ("pytusd", "pytusd-baseline")  # the servers scenarios 3-5 can take (--slow-servers etc.)


def new_over_old(summary: dict[str, Any], key: Callable[[Any], float], what: str, unit: str = "") -> list[str]:
    """A line 'pytusd / pytusd (baseline) <what>' when both were measured (``key`` picks the figure)."""
    if "pytusd" not in summary or "pytusd-baseline" not in summary:
        return []
    new, old = key(summary["pytusd"]), key(summary["pytusd-baseline"])
    ratio = new / old if old else float("nan")
    return [f"pytusd / pytusd (baseline) {what}: {ratio:.2f}x ({new:.2f} / {old:.2f}{unit})"]


# Opt-in, for scenario 1: the cost of --fsync, measured in the same run (--servers pytusd,pytusd-fsync).
SERVERS["pytusd-fsync"] = pytusd_spec("pytusd-fsync", "pytusd --fsync", "--fsync")
# Opt-in, for scenario 1: pytusd without splice(2) (every body byte through Python), measured in the same run.
SERVERS["pytusd-nosplice"] = pytusd_spec("pytusd-nosplice", "pytusd (no splice)", env={"PYTUSD_NO_SPLICE": "1"})
# Opt-in, for scenarios 1 and 2: the cost of --file-io threads against inline, with and without splice(2).
for _mode in ("inline", "threads"):
    SERVERS[f"pytusd-{_mode}"] = pytusd_spec(f"pytusd-{_mode}", f"pytusd --file-io {_mode}", "--file-io", _mode)
    SERVERS[f"pytusd-nosplice-{_mode}"] = pytusd_spec(
        f"pytusd-nosplice-{_mode}", f"pytusd --file-io {_mode} (no splice)", "--file-io", _mode,
        env={"PYTUSD_NO_SPLICE": "1"},
    )


def fresh_server(ctx: Ctx, spec: ServerSpec, tag: str, upload_base: str = "") -> RunningServer:
    """``spec`` started on an empty directory ``<upload_base or work dir>/<tag>``; its log in the work dir."""
    upload_dir = os.path.join(upload_base or ctx.work_dir, tag)
    return RunningServer(spec, upload_dir, os.path.join(ctx.work_dir, tag + ".log"), ctx.args.start_timeout)


def finish_server(ctx: Ctx, server: RunningServer) -> int | None:
    """Stop ``server``, delete its directory (unwritten page cache goes with it), sync, settle."""
    rc = server.stop()
    shutil.rmtree(server.upload_dir, ignore_errors=True)
    os.sync()
    if rc not in (0, -signal.SIGTERM):
        print(f"  note: {server.spec.label} exited with {rc} on SIGTERM; log {server.log_path}", file=sys.stderr)
    time.sleep(ctx.args.settle)
    return rc


def worker_pids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


# -- scenario 1 ---------------------------------------------------------------------------------------------------


def scenario_1(ctx: Ctx) -> dict[str, Any]:
    outcome = scenario_upload(ctx)
    summary = summarize(outcome["uploads"], ctx.args.servers, list(outcome["variants"]))
    verdicts = []
    for v, entry in summary.items():
        if "ratio_pytusd_over_tus_node" in entry:
            verdicts.append(verdict(f"1 {v}: pytusd / @tus/server MB/s", entry["ratio_pytusd_over_tus_node"],
                                    TARGET_RATIO))
        if "ratio_pytusd_over_tusd" in entry:
            verdicts.append(verdict(f"1 {v}: pytusd / tusd MB/s", entry["ratio_pytusd_over_tusd"], TARGET_TUSD_RATIO))
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


def skipped_notes(ctx: Ctx, key: str) -> list[str]:
    """A line per server of ``--servers`` or ``--small-servers`` (``key``) left out because it is not installed."""
    lines = [f"{SERVERS[n].label} skipped: {why}" for n, why in ctx.args.skipped[key].items()]
    for line in lines:
        print(f"  {line}", flush=True)
    return lines


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


# -- scenario 2 (and 5's small-request variant) ----------------------------------------------------------------


def measure_small(ctx: Ctx, spec: ServerSpec, round_no: int, tag: str) -> dict[str, Any]:
    """``--clients`` connections, each POSTing ``--body-size`` uploads with their body (creation-with-upload) one
    after the other for ``--duration`` seconds after a ``--warmup`` of the same."""
    import loadclient

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
            server.port, spec.base_path, args.clients, body, args.warmup, args.duration, on_window
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
    acknowledged = res["requests"] + res["warmup_requests"]
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


def small_table(rows: list[dict[str, Any]], specs: Sequence[ServerSpec]) -> tuple[list[str], dict[str, Any]]:
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
            f"| {spec.label} | {entry['req_per_s']:.0f} ({min(rps):.0f}-{max(rps):.0f}) | {entry['mb_per_s']:.0f}"
            f" | {entry['p50_ms']:.1f} | {entry['p99_ms']:.1f} | {entry['errors']} | {entry['server_cores']:.2f}"
            f" | {entry['server_cpu_ms_per_req']:.2f} | {entry['client_cores']:.2f}"
            f" | {entry['client_cpu_ms_per_req']:.2f} | {entry['peak_rss_mb']:.0f} |"
        )
    return out, summary


def scenario_2(ctx: Ctx) -> dict[str, Any]:
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
        f" byte sent to its 201 received; errors summed over rounds; upload dirs on {_fs_of(ctx.small_dir)}.",
    ]
    if "pytusd" in summary and "tus-node" in summary:
        p, t = summary["pytusd"], summary["tus-node"]
        ratio = p["req_per_s"] / t["req_per_s"]
        verdicts = [
            verdict("2: pytusd / @tus/server req/s", ratio, TARGET_SMALL_RATIO),
            verdict("2: pytusd p99 / @tus/server p99", p["p99_ms"] / t["p99_ms"], 1.0, higher_is_better=False),
        ]
    if "pytusd" in summary and "tusd" in summary:
        p, t = summary["pytusd"], summary["tusd"]
        verdicts += [
            verdict("2: pytusd / tusd req/s", p["req_per_s"] / t["req_per_s"], TARGET_TUSD_RATIO),
            verdict("2: pytusd p99 / tusd p99", p["p99_ms"] / t["p99_ms"], 1.0, higher_is_better=False),
        ]
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
    return {
        "title": f"Scenario 2: {args.clients} concurrent clients, {fmt_size(args.body_size)} creation-with-upload",
        "table": table + [""] + notes,
        "summary": summary,
        "verdicts": verdicts,
        "runs": rows,
    }


# -- scenario 3 ---------------------------------------------------------------------------------------------------


def fd_count(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return total


def measure_slow(ctx: Ctx, spec: ServerSpec, round_no: int) -> dict[str, Any]:
    import loadclient

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


def scenario_3(ctx: Ctx) -> dict[str, Any]:
    import loadclient

    args = ctx.args
    loadclient.raise_nofile(4 * args.slow_uploads + 1024)  # the servers inherit it
    specs = [SERVERS[s] for s in args.slow_servers]
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
    return {
        "title": f"Scenario 3: {args.slow_uploads} slow uploads held open",
        "table": out,
        "summary": summary,
        "verdicts": verdicts,
        "runs": rows,
    }


# -- scenario 4 ---------------------------------------------------------------------------------------------------


def _ceph_pids(root: str) -> list[int]:
    pids = []
    for name in ("client.rgw.a.pid", "osd.0.pid", "mon.a.pid"):
        try:
            with open(os.path.join(root, "run", name)) as f:
                pids.append(int(f.read().strip()))
        except (OSError, ValueError):
            pass
    return pids


def scenario_4(ctx: Ctx) -> dict[str, Any]:
    missing = [p for p in ("ceph-mon", "ceph-osd", "radosgw", "ceph", "radosgw-admin", "monmaptool", "ceph-authtool")
               if shutil.which(p) is None]
    if missing:
        raise ScenarioSkipped(f"Ceph is not installed (missing {', '.join(missing)}; scripts/test installs it)")
    sys.path.insert(0, REPO_DIR)
    try:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config as BotoConfig
        from testbed.services import S3_ACCESS_KEY, S3_SECRET_KEY, ceph_rgw
    except ImportError as exc:
        raise BenchError(f"scenario 4 needs boto3 and the repo's testbed/services.py: {exc}") from exc
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

            def via_pytusd(r: int, variant: str) -> dict[str, Any]:
                extra = ["--s3-disable-content-hashes"] if variant.endswith("-nohash") else []
                spec = pytusd_spec("pytusd-s3", "pytusd -> S3", "--s3-bucket", bucket, "--s3-endpoint", endpoint,
                                   *extra, env=creds, base=variant.removesuffix("-nohash"))
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
                        raise BenchError(f"pytusd: object {key} has {stored} bytes, expected {size}")
                    sha_ok = None
                    if r == 1 and args.sha256:
                        h = hashlib.sha256()
                        for block in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(4 * MiB):
                            h.update(block)
                        sha_ok = h.hexdigest() == ctx.sha256(size)
                        if not sha_ok:
                            raise BenchError("pytusd: the object's sha256 differs from the bytes sent")
                finally:
                    finish_server(ctx, server)
                return {"client_cpu_s": cpu, "server_cpu_s": counters.cpu_s, "wall_s": wall, "ceph_cpu_s": ceph_s,
                        "steal_s": steal, "other_cores": other, **quiet, "peak_rss_mb": hwm * KiB / MB,
                        "sha256_ok": sha_ok}

            # --s3-servers (pytusd, pytusd-baseline): each with and without hashes, alternating with boto3.
            variants = [*args.s3_servers, "boto3", *(f"{n}-nohash" for n in args.s3_servers), "boto3-tuned"]
            # Warm-up of boto3 (imports, connection pool) outside the measurement.
            boto_default.upload_file(payload, bucket, "warmup", Config=TransferConfig(multipart_threshold=size * 2)) \
                if size <= 64 * MiB else boto_default.put_object(Bucket=bucket, Key="warmup", Body=b"x" * 1024)
            for r in range(1, args.rounds + 1):
                for variant in rotate(variants, r - 1):
                    clean()
                    res = via_pytusd(r, variant) if variant.startswith("pytusd") else via_boto(variant, r)
                    res.update(round=r, variant=variant, size=size, mb_per_s=size / res["wall_s"] / MB)
                    rows.append(res)
                    print(
                        f"  round {r}/{args.rounds} {variant:<12} {res['mb_per_s']:7.0f} MB/s  pytusd cpu"
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
        "| path | MB/s median (min-max) | pytusd CPU-s/GiB | bench client CPU-s/GiB | Ceph CPU-s/GiB | pytusd peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {}
    labels = {"pytusd": "client -> pytusd -> RGW",
              "pytusd-nohash": "client -> pytusd --s3-disable-content-hashes -> RGW",
              "boto3": "boto3 upload_file (defaults) -> RGW",
              "boto3-tuned": "boto3 upload_file (pytusd's settings) -> RGW",
              "pytusd-baseline": "client -> pytusd (baseline) -> RGW",
              "pytusd-baseline-nohash": "client -> pytusd (baseline) --s3-disable-content-hashes -> RGW"}
    for variant in [v for v in labels if any(x["variant"] == v for x in rows)]:
        mine = [x for x in rows if x["variant"] == variant]
        mbs = [x["mb_per_s"] for x in mine]
        entry = {k: median_of(mine, k) for k in ("mb_per_s", "server_cpu_s", "client_cpu_s", "ceph_cpu_s")}
        entry["peak_rss_mb"] = median_of(mine, "peak_rss_mb") if variant.startswith("pytusd") else None
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
        f" medians of {args.rounds} round(s). CPU: the pytusd process / the bench process (the client; for boto3,"
        " boto3 itself) / radosgw + ceph-osd + ceph-mon.")]
    out += new_over_old(summary, lambda e: e["mb_per_s"], "MB/s")
    if "pytusd-nohash" in summary:
        out += new_over_old({k.removesuffix("-nohash"): v for k, v in summary.items() if k.endswith("-nohash")},
                            lambda e: e["mb_per_s"], "--s3-disable-content-hashes MB/s")
    if "pytusd" not in summary:
        return {"title": f"Scenario 4: one {fmt_size(size)} upload into Ceph RGW (S3)", "table": out,
                "summary": summary, "verdicts": [], "runs": rows}
    ratio = summary["pytusd"]["mb_per_s"] / summary["boto3"]["mb_per_s"]
    ratio_tuned = summary["pytusd"]["mb_per_s"] / summary["boto3-tuned"]["mb_per_s"]
    ratio_nohash = summary["pytusd-nohash"]["mb_per_s"] / summary["boto3-tuned"]["mb_per_s"]
    return {
        "title": f"Scenario 4: one {fmt_size(size)} upload into Ceph RGW (S3)",
        "table": out,
        "summary": summary,
        "verdicts": [
            verdict("4: pytusd / boto3 upload_file (defaults) MB/s", ratio, TARGET_S3_RATIO),
            verdict("4: pytusd / boto3 upload_file (pytusd's settings) MB/s", ratio_tuned, TARGET_S3_RATIO),
            verdict("4: pytusd --s3-disable-content-hashes / boto3 upload_file (pytusd's settings) MB/s",
                    ratio_nohash, TARGET_S3_RATIO),
        ],
        "runs": rows,
    }


# -- scenario 5 ---------------------------------------------------------------------------------------------------


def measure_parallel_uploads(ctx: Ctx, spec: ServerSpec, round_no: int, tag: str) -> dict[str, Any]:
    """``--parallel-uploads`` uploads at once, each its own keep-alive connection (a thread with the raw-socket
    client): POST + PATCHes of --patch-size; together --parallel-size bytes."""
    import concurrent.futures

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


def connections_by_worker(port: int, workers: list[int]) -> dict[int, set[str]]:
    """Per worker PID: the inodes of the server-side TCP connections on ``port`` it holds (from /proc)."""
    established = set()
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
                    established.add(fields[9])
    except OSError:
        return {}
    out: dict[int, set[str]] = {}
    for pid in workers:
        inodes = set()
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:[") and target[8:-1] in established:
                        inodes.add(target[8:-1])
        except OSError:
            pass
        out[pid] = inodes
    return out


def scenario_5(ctx: Ctx) -> dict[str, Any]:
    args = ctx.args
    cores = os.cpu_count() or 1
    counts = sorted({1, min(args.max_workers or cores, cores)})
    # --workers-servers: the installs compared (pytusd, pytusd-baseline), each with every count of workers;
    # this checkout's pytusd keeps the names workers-N (and its summary the keys N).
    runs = [(base, n, pytusd_spec(f"workers-{n}" if base == "pytusd" else f"{base}-workers-{n}",
                                  f"{SERVERS[base].label} --workers {n}", "--workers", str(n), base=base))
            for base in args.workers_servers for n in counts]
    specs = [spec for _, _, spec in runs]
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
            who = "" if args.workers_servers == ["pytusd"] else f" ({SERVERS[install].label})"
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
        " second by the CPU ceiling.")] + ratios
    return {
        "title": f"Scenario 5: --workers {counts[-1]} vs --workers 1 on {cores} cores",
        "table": out,
        "summary": summary,
        "verdicts": verdicts,
        "runs": {"big": rows_big, "small": rows_small},
    }


@dataclasses.dataclass(frozen=True)
class Scenario:
    number: int
    name: str
    help: str
    run: Callable[[Ctx], dict[str, Any]]
    minutes: str  # with the default options, on the 2-vCPU reference machine


SCENARIOS: dict[int, Scenario] = {
    s.number: s
    for s in (
        Scenario(1, "upload-1g", "one 1 GiB upload (POST + 16 MiB PATCHes; POST + one PATCH): pytusd vs tusd"
                 " vs @tus/server vs the raw sink", scenario_1, "~1.5"),
        Scenario(2, "small-uploads", "200 concurrent clients, each creating 256 KiB uploads with the body in the POST:"
                 " req/s, p50/p99", scenario_2, "~1.5"),
        Scenario(3, "slow-uploads", "1,000 slow uploads held open: RSS and failures", scenario_3, "~2"),
        Scenario(4, "s3", "one 1 GiB upload into Ceph RGW through pytusd vs boto3's upload_file", scenario_4, "~2"),
        Scenario(5, "workers", "--workers 2 vs --workers 1 (file locker): parallel large uploads and scenario 2's"
                 " load", scenario_5, "~1.5"),
    )
}
SCENARIO_NAMES = {s.name: s.number for s in SCENARIOS.values()}


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
        if "pytusd" in per and "tusd" in per:
            summary[v]["ratio_pytusd_over_tusd"] = (
                per["pytusd"]["mb_per_s"]["median"] / per["tusd"]["mb_per_s"]["median"]
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
        "tusd": _tusd_version(),
        "tus_server": _pkg_version("@tus/server"),
        "tus_file_store": _pkg_version("@tus/file-store"),
        "git_commit": _run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR),
        "git_dirty_src": bool(_run(["git", "status", "--porcelain", "--", "src"], cwd=REPO_DIR)),
        # --baseline-python: the other install's pytusd (scripts/bench-baseline puts its commit in the path).
        "pytusd_baseline": BASELINE["python"] and {
            "python": BASELINE["python"],
            "pytusd": _run([BASELINE["python"], "-c", "import pytusd; print(pytusd.__version__, pytusd.__file__)"]),
        },
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


def _tusd_version() -> str:
    """tusd's module version from the binary's build info (`go install` leaves `tusd -version` at "n/a")."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    for line in _run([go, "version", "-m", TUSD_BIN]).splitlines():
        fields = line.split()
        if fields[:2] == ["mod", "github.com/tus/tusd/v2"] and len(fields) > 2:
            return fields[2]
    return ""


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
        description="Benchmark pytusd against tusd (Go), @tus/server (Node), the raw sink, boto3 and itself on this machine;"
        " every comparison is measured in the same run, alternating, and reported as medians and ratios.",
    )
    p.add_argument("scenario_name", nargs="?", default="", metavar="SCENARIO",
                   help="a scenario by name (upload-1g, small-uploads, slow-uploads, s3, workers); see --scenario")
    p.add_argument("--scenario", default="", help="comma-separated scenario numbers or names (default: all: 1,2,3,4,5)")
    p.add_argument("--list", action="store_true", help="list scenarios and exit")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 round, small sizes and short durations (~3 min instead of ~9; no verdicts)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    g = p.add_argument_group("scenario 1 (upload-1g)")
    g.add_argument("--size", type=parse_size, default=None, help="upload size (default 1GiB; e.g. 64MiB)")
    g.add_argument("--patch-size", type=parse_size, default=16 * MiB,
                   help="PATCH size of variant a, and of scenario 5's uploads (default 16MiB)")
    g.add_argument(
        "--variants", default="", help="comma-separated subset: patch-16MiB (a, chunked), patch-single (b, single)"
    )
    g.add_argument(
        "--servers", default="pytusd,tusd,tus-node,raw-sink", help="comma-separated subset of: " + ", ".join(SERVERS)
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
    g.add_argument("--small-servers", default="pytusd,tusd,tus-node,raw-sink",
                   help="comma-separated subset of the --servers list (default: pytusd,tusd,tus-node,raw-sink)")
    g.add_argument("--small-work-dir", default="",
                   help="where these uploads go (default: /dev/shm when it has 8 GiB free, else --work-dir; see README)")
    g = p.add_argument_group("scenario 3 (slow-uploads)")
    g.add_argument("--slow-uploads", type=int, default=1000, help="uploads held open at once (default 1000)")
    g.add_argument("--slow-chunk", type=parse_size, default=4 * KiB, help="bytes per chunk (default 4KiB)")
    g.add_argument("--slow-chunks", type=int, default=15, help="chunks per upload (default 15)")
    g.add_argument("--slow-interval", type=float, default=1.0, help="seconds between chunks (default 1)")
    g.add_argument("--slow-ramp", type=float, default=5.0, help="seconds over which the uploads open (default 5)")
    g.add_argument("--slow-servers", default="pytusd,tus-node",
                   help="comma-separated subset of: pytusd, pytusd-baseline, tus-node (default: pytusd,tus-node)")
    g = p.add_argument_group("scenario 4 (s3)")
    g.add_argument("--s3-size", type=parse_size, default=GiB, help="upload size (default 1GiB)")
    g.add_argument("--memstore", type=parse_size, default=4 * GiB, help="Ceph memstore OSD size (default 4GiB)")
    g.add_argument("--s3-servers", default="pytusd",
                   help="the pytusd installs sending to RGW: pytusd and/or pytusd-baseline (default: pytusd)")
    g = p.add_argument_group("scenario 5 (workers)")
    g.add_argument("--parallel-uploads", type=int, default=8, help="uploads at once in the 'big' load (default 8)")
    g.add_argument("--parallel-size", type=parse_size, default=GiB, help="their total size (default 1GiB)")
    g.add_argument("--max-workers", type=int, default=0, help="workers compared with 1 (default: the core count)")
    g.add_argument("--workers-servers", default="pytusd",
                   help="the pytusd installs compared: pytusd and/or pytusd-baseline (default: pytusd)")
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


def report_scenario(number: int, result: dict[str, Any]) -> list[str]:
    lines = [f"### {result['title']}", ""] + result["table"] + [""]
    lines += [f"- {format_verdict(v)}" for v in result["verdicts"]]
    print()
    print("\n".join(lines), flush=True)
    return lines


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
    for s in args.servers + args.small_servers:
        if s not in SERVERS:
            print(f"unknown server {s!r}; known: {', '.join(SERVERS)}", file=sys.stderr)
            return 2
    for key, allowed in (("slow_servers", (*PYTUSD_INSTALLS, "tus-node")), ("s3_servers", PYTUSD_INSTALLS),
                         ("workers_servers", PYTUSD_INSTALLS)):
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
    # A peer that is not installed (tusd without Go) is left out and reported as skipped by the scenarios naming it.
    missing = {}
    if not os.access(TUSD_BIN, os.X_OK):
        missing["tusd"] = (f"not installed ({os.path.relpath(TUSD_BIN, REPO_DIR)} missing; scripts/bench builds it"
                           " with Go, which is missing or failed)")
    args.skipped = {key: {n: missing[n] for n in getattr(args, key) if n in missing}
                    for key in ("servers", "small_servers")}
    args.servers = [s for s in args.servers if s not in missing]
    args.small_servers = [s for s in args.small_servers if s not in missing]
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
        print(f"\nresults written to {os.path.relpath(path, os.getcwd())}")
    return status


if __name__ == "__main__":
    sys.exit(main())
