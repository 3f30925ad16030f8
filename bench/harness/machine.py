"""The machine under the bench: waiting for it to be quiet, prefaulting memory, describing it for the JSON."""

from __future__ import annotations

import json
import mmap
import os
import platform
import shutil
import subprocess
import time
from typing import Any

from bench.harness.paths import PEERS_DIR, REPO_DIR, RUSTUS_BIN, TUSD_BIN, VENV_BIN
from bench.harness.proc import machine_busy_seconds, mount_of, status_line
from bench.harness.servers import BASELINE
from bench.harness.units import KiB, MiB


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
    n = min(n, status_line("/proc/meminfo", "MemAvailable") * KiB // 2)
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


def fs_of(path: str) -> str:
    m = mount_of(path)
    return f"{m['fstype']} ({m['mount_point']})"


def _run(cmd: list[str], cwd: str | None = None) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(work_dir: str) -> dict[str, Any]:
    mem_kib = status_line("/proc/meminfo", "MemTotal")
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
        "tusd": tusd_version(),
        "rustus": _run([RUSTUS_BIN, "--version"]) if os.access(RUSTUS_BIN, os.X_OK) else "",  # "Rustus 0.5.10"
        "tus_server": pkg_version("@tus/server"),
        "tus_file_store": pkg_version("@tus/file-store"),
        "git_commit": _run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR),
        "git_dirty_src": bool(_run(["git", "status", "--porcelain", "--", "src"], cwd=REPO_DIR)),
        # --baseline-python: the other install's pytusd (scripts/bench-baseline puts its commit in the path).
        "pytusd_baseline": BASELINE["python"] and {
            "python": BASELINE["python"],
            "pytusd": _run([BASELINE["python"], "-c", "import pytusd; print(pytusd.__version__, pytusd.__file__)"]),
        },
    }


def tusd_version() -> str:
    """tusd's module version from the binary's build info (`go install` leaves `tusd -version` at "n/a")."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    for line in _run([go, "version", "-m", TUSD_BIN]).splitlines():
        fields = line.split()
        if fields[:2] == ["mod", "github.com/tus/tusd/v2"] and len(fields) > 2:
            return fields[2]
    return ""


def pkg_version(name: str) -> str:
    try:
        with open(os.path.join(PEERS_DIR, "node_modules", *name.split("/"), "package.json")) as f:
            return json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        return ""
