"""Real services started on 127.0.0.1 for the test suite and the bench: redis-server, a single-node Ceph RADOS
Gateway (S3), nginx, Azurite and the GCS emulator.

Each one is started by its caller, on its own free port and in its own folder, and stopped by its own PID.
``scripts/test`` installs their Debian packages and Azurite (npm, into testbed/node). When a service's program is
missing, its starter raises ServiceMissing before starting anything: the suite skips the tests that need it on a
developer's machine and fails them under ``CI=true`` (tests/conftest.py), the bench reports its scenario as skipped.
Nothing here imports pytest or the tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path


S3_ACCESS_KEY = "PYTUSDACCESS"
S3_SECRET_KEY = "PYTUSDSECRET"
# Azurite's fixed development account (documented by Microsoft for the emulator; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
SERVICES_NODE = Path(__file__).resolve().parent / "node" / "node_modules" / ".bin"
# The programs ceph_rgw starts or calls (Debian packages ceph-mon, ceph-osd, radosgw, ceph-common).
CEPH_PROGRAMS = ("ceph-mon", "ceph-osd", "radosgw", "ceph", "radosgw-admin", "monmaptool", "ceph-authtool")


class ServiceMissing(Exception):
    """A program a service needs is not installed; nothing was started."""


# tusd, built by scripts/install-tusd (scripts/test and scripts/bench run it; bench/peers is gitignored).
TUSD_BINARY = Path(__file__).resolve().parent.parent / "bench" / "peers" / "go" / "bin" / "tusd"


def tusd_binary() -> Path:
    """The tusd binary for side-by-side tests; PYTUSD_TUSD names another one."""
    binary = Path(os.environ.get("PYTUSD_TUSD") or TUSD_BINARY)
    if not os.access(binary, os.X_OK):
        raise ServiceMissing(f"no tusd binary at {binary} (scripts/install-tusd builds it; it needs Go)")
    return binary


def tusd_source() -> Path:
    """tusd's module source (its docs and examples), which scripts/install-tusd's `go install` downloaded."""
    versions = sorted((TUSD_BINARY.parent.parent / "modcache" / "github.com" / "tus" / "tusd").glob("v2@v*"))
    if not versions:
        raise ServiceMissing("no tusd module source in bench/peers/go/modcache (scripts/install-tusd downloads it)")
    return versions[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_programs(*programs: str) -> list[str]:
    """Those of ``programs`` that are not on the PATH."""
    return [p for p in programs if shutil.which(p) is None]


def require(*programs: str) -> None:
    """Raise ServiceMissing unless every program is installed."""
    missing = missing_programs(*programs)
    if missing:
        raise ServiceMissing(f"missing {', '.join(missing)} (scripts/test installs them with apt-get as root)")


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what or 'service'} did not listen on port {port} within {timeout:.0f}s")


def stop_pid(pid: int, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; quiet when the process is gone already."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # A child of ours is a zombie until reaped; a daemonised one is reaped by init.
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# --- redis ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(folder: Path, port: int | None = None, password: str | None = None) -> Iterator[str]:
    """A throw-away redis-server (on ``port``, else a free one; with ``requirepass`` when given); yields its URL
    (without the password)."""
    require("redis-server")
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = open(folder / "redis.log", "ab")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder), *(["--requirepass", password] if password else [])],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, 15, proc, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_pid(proc.pid)
        log.close()


# --- Ceph RADOS Gateway -----------------------------------------------------------------------------------------------

_CEPH_CONF = """\
[global]
fsid = {fsid}
mon initial members = a
mon host = [v2:127.0.0.1:{mon_port}]
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 1
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
run dir = {root}/run
admin socket = {root}/run/$name.asok
pid file = {root}/run/$name.pid
log file = {root}/log/$name.log
mon data = {root}/mon/$name
osd data = {root}/osd/$name
keyring = {root}/keyring
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {root}/rgw
ms mon client mode = crc
# Free deleted and aborted data soon (default: after 2 h), so the in-memory OSD does not fill up during a run.
rgw gc obj min wait = 30
rgw gc processor period = 30
# Lifecycle rules run all day and a rule's "day" lasts 10 s, so a test can see a rule applied (README "S3").
rgw lc debug interval = 10
rgw lifecycle work time = 00:00-23:59
"""


@contextlib.contextmanager
def ceph_rgw(root: Path, memstore_bytes: int = 3 << 30) -> Iterator[str]:
    """A single-node Ceph (one monitor, one in-memory OSD, radosgw with auth off); yields the S3 endpoint URL.

    The S3 user has the keys ``S3_ACCESS_KEY``/``S3_SECRET_KEY``. Takes about 12 s to start and ~200 MB of memory
    plus what is stored (memstore keeps objects in RAM, bounded by ``memstore_bytes``).
    """
    require(*CEPH_PROGRAMS)
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("run", "log", "mon", "osd/osd.0", "rgw"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    mon_port, rgw_port = free_port(), free_port()
    conf = root / "ceph.conf"
    fsid = str(uuid.uuid4())
    conf.write_text(
        _CEPH_CONF.format(fsid=fsid, mon_port=mon_port, rgw_port=rgw_port, root=root, memstore_bytes=memstore_bytes)
    )
    c = ["-c", str(conf)]

    def run(*cmd: str, timeout: float = 60) -> None:
        subprocess.run(cmd, check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    pid_files = [root / "run" / name for name in ("client.rgw.a.pid", "osd.0.pid", "mon.a.pid")]
    try:
        run("ceph-authtool", "--create-keyring", str(root / "keyring"), "--gen-key", "-n", "mon.", "--cap", "mon",
            "allow *")
        run("monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{mon_port}]", "--fsid", fsid,
            str(root / "monmap"))
        run("ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(root / "monmap"), "--keyring", str(root / "keyring"))
        run("ceph-mon", *c, "-i", "a")  # daemonises
        osd_uuid = str(uuid.uuid4())
        run("ceph", *c, "osd", "new", osd_uuid, timeout=30)
        run("ceph-osd", *c, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        run("ceph-osd", *c, "-i", "0")
        run("radosgw", *c, "-n", "client.rgw.a", "--ms-mon-client-mode", "crc")
        wait_for_port(rgw_port, 60, what="radosgw")
        run("radosgw-admin", *c, "user", "create", "--uid=pytusd", "--display-name=pytusd",
            f"--access-key={S3_ACCESS_KEY}", f"--secret-key={S3_SECRET_KEY}")
        yield f"http://127.0.0.1:{rgw_port}"
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"starting Ceph failed: {exc.cmd}: {exc.stderr.decode(errors='replace')}") from exc
    finally:
        for pid_file in pid_files:
            with contextlib.suppress(FileNotFoundError, ValueError):
                stop_pid(int(pid_file.read_text().strip()))
        shutil.rmtree(root, ignore_errors=True)


# --- nginx ---------------------------------------------------------------------------------------------------------

_NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 1024; }}
http {{
  access_log {root}/access.log;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  upstream pytusd {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    location / {{
      proxy_pass http://pytusd;
      proxy_http_version 1.1;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_read_timeout 120s;
      proxy_send_timeout 120s;
      proxy_next_upstream error timeout;
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Forwarded-Proto $scheme;
    }}
  }}
}}
"""


@contextlib.contextmanager
def nginx(root: Path, backends: list[int]) -> Iterator[int]:
    """nginx as a round-robin load balancer over ``backends`` (ports on 127.0.0.1); yields its port."""
    require("nginx")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    servers = "\n".join(f"    server 127.0.0.1:{b} max_fails=0;" for b in backends)
    conf = root / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(root=root, servers=servers, port=port))
    nginx_bin = shutil.which("nginx") or "nginx"
    proc = subprocess.Popen([nginx_bin, "-p", str(root), "-c", str(conf)], stderr=open(root / "stderr.log", "ab"))
    try:
        wait_for_port(port, 15, proc, "nginx")
        yield port
    finally:
        stop_pid(proc.pid)


# --- Azurite (Azure Blob Storage emulator, npm) ---------------------------------------------------------------------


@contextlib.contextmanager
def azurite(folder: Path, *, next_release: bool = False) -> Iterator[str]:
    """Azurite's blob service; yields the account's blob endpoint (``http://127.0.0.1:PORT/devstoreaccount1``).

    ``next_release``: Azurite 3.37 (npm alias ``azurite-next`` in testbed/node), the first release with Put Block
    From URL; the suite's Azurite (3.35) answers it 501."""
    require("node")
    program = SERVICES_NODE / "azurite-blob"
    if next_release:
        program = SERVICES_NODE.parent / "azurite-next" / "dist" / "src" / "blob" / "main.js"
    if not program.exists():
        raise ServiceMissing(f"{program} is missing: scripts/test installs it into testbed/node")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(folder / "azurite.log", "ab")
    command = ["node", str(program)] if next_release else [str(program)]
    proc = subprocess.Popen(
        [*command, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(folder),
         "--skipApiVersionCheck", "--disableTelemetry", "--silent"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, 30, proc, "azurite")
        yield f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    finally:
        stop_pid(proc.pid)
        log.close()


# --- GCS emulator (gcp-storage-emulator, PyPI) ----------------------------------------------------------------------


@contextlib.contextmanager
def gcs_emulator(folder: Path) -> Iterator[str]:
    """gcp-storage-emulator (a stub of the GCS JSON API, kept in ``folder``); yields its URL."""
    program = Path(sys.executable).parent / "gcp-storage-emulator"
    if not program.exists():
        raise ServiceMissing("gcp-storage-emulator is missing (a test extra: pip install -e '.[test]')")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(folder / "gcs.log", "ab")
    proc = subprocess.Popen(
        [str(program), "-d", str(folder / "data"), "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, 30, proc, "gcp-storage-emulator")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_pid(proc.pid)
        log.close()
