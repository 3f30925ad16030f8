"""What the server process sets up for itself: the open-files limit and glibc's malloc thresholds."""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files to the hard limit, as Go (so tusd) and Node do at start-up.

    Every open upload holds its connection, its data file and, with the file locker, its lock file: under the usual
    soft limit of 1,024 uploads failed from about 340 open at once with "Too many open files" (bench scenario 3).
    Returns the soft limit now in force (0 where there are no such limits)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft
    # An infinite hard limit cannot be the soft one (the kernel's nr_open caps it): take a large finite one.
    for want in [hard] if hard != resource.RLIM_INFINITY else [1 << 20, 1 << 16]:
        if want <= soft:
            return soft
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            return want
        except (ValueError, OSError):
            continue
    return soft


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds so that every ~256 KB body chunk is not a fresh mmap/munmap pair.

    Measured when the server was uvicorn's, that page-fault churn halved the upload throughput (bench/NOTES.md).
    Returns whether the tuning was applied (glibc only; a no-op elsewhere).
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_THRESHOLD, 4 * 1024 * 1024) == 1)
    return bool(mallopt(_M_TRIM_THRESHOLD, 256 * 1024 * 1024) == 1) and ok
