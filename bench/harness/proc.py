"""What /proc says about a process tree and the machine: CPU time, page faults, memory, file descriptors,
connections per worker, steal and busy time, mounts."""

from __future__ import annotations

import contextlib
import dataclasses
import os


CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def _status_kib(pid: int, key: str) -> int:
    return status_line(f"/proc/{pid}/status", key)


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB, summed over the process tree (one process for both servers measured here)."""
    tree = process_tree(pid)
    return sum(_status_kib(p, "VmRSS") for p in tree), sum(_status_kib(p, "VmHWM") for p in tree)


def status_line(path: str, key: str) -> int:
    """The number on the ``key:`` line of a /proc file such as status or meminfo (kB), 0 when absent."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def worker_pids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def fd_count(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return total


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
