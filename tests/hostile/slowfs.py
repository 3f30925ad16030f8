"""A FUSE passthrough filesystem whose writes are slow: each write request sleeps first (the test's slow NFS).

    python slowfs.py BACKING_DIR MOUNT_POINT [--write-delay SECONDS]

Runs in the foreground until unmounted (``umount MOUNT_POINT``); every file operation goes to BACKING_DIR, writes
(``write(2)``, ``pwrite``, ``splice`` into a file: the kernel sends each as FUSE write requests of up to 128 KiB)
after ``--write-delay`` seconds. Other operations are quick. Multithreaded, so a slow write holds only its own
request, as on a real network filesystem. Needs fusepy and libfuse 2 (a test dependency, not pytusd's).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time

from fuse import FUSE, FuseOSError, Operations


class SlowWrites(Operations):
    def __init__(self, root: str, write_delay: float) -> None:
        self.root = os.path.realpath(root)
        self.write_delay = write_delay

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def __call__(self, op, *args):  # every OSError goes back to the kernel as its errno
        try:
            return super().__call__(op, *args)
        except OSError as exc:
            raise FuseOSError(exc.errno or errno.EIO) from None

    # -- metadata -------------------------------------------------------------------------------------------------

    def access(self, path, amode):
        if not os.access(self._full(path), amode):
            raise FuseOSError(errno.EACCES)

    def getattr(self, path, fh=None):
        st = os.lstat(self._full(path))
        return {key: getattr(st, key) for key in (
            "st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size", "st_uid")}

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._full(path))]

    def statfs(self, path):
        st = os.statvfs(self._full(path))
        return {key: getattr(st, key) for key in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag", "f_frsize",
            "f_namemax")}

    def chmod(self, path, mode):
        os.chmod(self._full(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._full(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self._full(path), times)

    def mkdir(self, path, mode):
        os.mkdir(self._full(path), mode)

    def rmdir(self, path):
        os.rmdir(self._full(path))

    def unlink(self, path):
        os.unlink(self._full(path))

    def rename(self, old, new):
        os.rename(self._full(old), self._full(new))

    def truncate(self, path, length, fh=None):
        if fh is not None and fh.fh:
            os.ftruncate(fh.fh, length)
        else:
            os.truncate(self._full(path), length)

    # -- files (raw_fi: the kernel's fuse_file_info, whose fh is our descriptor) ----------------------------------

    def open(self, path, fi):
        fi.fh = os.open(self._full(path), fi.flags & ~os.O_CREAT)
        return 0

    def create(self, path, mode, fi):
        fi.fh = os.open(self._full(path), fi.flags | os.O_CREAT, mode)
        return 0

    def read(self, path, size, offset, fi):
        return os.pread(fi.fh, size, offset)

    def write(self, path, data, offset, fi):
        time.sleep(self.write_delay)
        return os.pwrite(fi.fh, data, offset)

    def flush(self, path, fi):
        return 0

    def fsync(self, path, datasync, fi):
        os.fsync(fi.fh)
        return 0

    def release(self, path, fi):
        os.close(fi.fh)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("backing")
    parser.add_argument("mount_point")
    parser.add_argument("--write-delay", type=float, default=0.2)
    args = parser.parse_args(argv)
    FUSE(SlowWrites(args.backing, args.write_delay), args.mount_point, raw_fi=True, foreground=True,
         nothreads=False, big_writes=True, allow_other=True, default_permissions=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
