"""Room kept aside on the state file system for the few writes that must happen when it is full.

A full disk is something a module can cause (a writable bind, an image pull, logs), and some writes decide what the
device's verifier sees or whether a revoked device starts again: the measurement list's journal, a revocation's
state. Each keeps a preallocated file beside it; a write refused for want of room is written into that file's own
blocks, the file renamed over the target, and the reserve made again once there is room.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path

from .fsutil import atomic_write, fsync_dir

__all__ = ["NO_ROOM", "Reserve"]

log = logging.getLogger(__name__)
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


class Reserve:
    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, size

    def keep(self) -> None:
        """Allocate the reserve if it is not there (at start, and after it was given up); no room: try later."""
        if self.path.exists():
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.debug("no room for the reserve file %s yet (%s)", self.path, e)

    def write(self, path: Path, data: bytes) -> None:
        """``atomic_write``, and on a full file system written into the reserve's own blocks, which then becomes
        ``path``. Never by freeing the reserve first: a module that keeps the disk full takes freed room before the
        write does (review N4d)."""
        try:
            atomic_write(path, data)
        except OSError as e:
            if e.errno not in NO_ROOM or len(data) > self.size or not self.path.exists():
                raise
            log.warning("no room for %s (%s); it is written into the reserve file's room", path, e.strerror)
            fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                os.pwrite(fd, data, 0)  # blocks allocated when the reserve was made: no new room needed
                os.ftruncate(fd, len(data))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.path, path)
            fsync_dir(path.parent)
