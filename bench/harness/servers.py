"""The servers measured: how each peer is started (pytusd, its variants and another install of it, tusd, @tus/server,
the raw sink), a running one stopped by its PID, a fresh one per measurement, and the peers' versions."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from bench.harness.context import Ctx
from bench.harness.errors import BenchError
from bench.harness.paths import PEERS_DIR, RUSTUS_BIN, TUSD_BIN, VENV_BIN


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
    # rustus (Rust, actix): its file store with its defaults (an actix worker per core). Its default
    # --max-body-size is 256 KiB: a larger PATCH is refused with 413, so scenario 1 measures "rustus-tuned" (below).
    "rustus": ServerSpec(
        name="rustus",
        label="rustus",
        argv=lambda port, d: [
            RUSTUS_BIN,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--data-dir", d,
            "--info-dir", d,
        ],
        base_path="/files",
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

# tusd on one core (GOMAXPROCS=1): scenario 5's peer of pytusd --workers 1 (same resources; bench/README.md).
SERVERS["tusd-1cpu"] = dataclasses.replace(SERVERS["tusd"], name="tusd-1cpu", label="tusd GOMAXPROCS=1",
                                           env={"GOMAXPROCS": "1"})
# rustus as its configuration docs tune it for big bodies: --max-body-size above the largest PATCH (the body is held in
# memory: rustus reads a whole request body before writing it).
SERVERS["rustus-tuned"] = dataclasses.replace(
    SERVERS["rustus"], name="rustus-tuned", label="rustus --max-body-size 2GiB",
    argv=lambda port, d: SERVERS["rustus"].argv(port, d) + ["--max-body-size", str(2 << 30)],
)
PEER_BINARIES = {"tusd": TUSD_BIN, "tusd-1cpu": TUSD_BIN, "rustus": RUSTUS_BIN, "rustus-tuned": RUSTUS_BIN}


# Opt-in, for scenario 1: the cost of --fsync, measured in the same run (--servers pytusd,pytusd-fsync).
SERVERS["pytusd-fsync"] = pytusd_spec("pytusd-fsync", "pytusd --fsync", "--fsync")
# Opt-in: the cost of --hooks-durable (post-create and post-finish recorded in the outbox before each answer, then
# delivered), measured in the same run. The hooks folder has no scripts (never created), so a delivery is a no-op:
# what is measured is the outbox, not a hook server.
SERVERS["pytusd-durable"] = pytusd_spec(
    "pytusd-durable", "pytusd --hooks-durable", "--hooks-durable", "--hooks-dir", "/nonexistent/pytusd-bench-hooks",
    "--hooks-enabled-events", "post-create,post-finish",
)
# Opt-in, for scenario 1: pytusd without splice(2) (every body byte through Python), measured in the same run.
# --digest: every byte hashed as it arrives (and so no splice); the cost of the whole-upload digest.
SERVERS["pytusd-digest"] = pytusd_spec("pytusd-digest", "pytusd --digest sha256", "--digest", "sha256")
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
