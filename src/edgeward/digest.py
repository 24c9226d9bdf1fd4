"""The measurement of a binary: sha256 of its bytes, size-capped, with a cache so re-measuring an unchanged file
is an open and an fstat, not a read. The process engine measures at creation and before every start, and the
integrity monitor and attestation re-measure on every pass and every new connection: all through this function.

Why a cache at all: attestation measures a host module's executable on every new workload connection, and the
Azure IoT SDKs open one per request; hashing costs about 1.6 ms per MB here (a 75 MB binary: 120 ms), the cache
hit about 10-50 us.

Why it cannot be fooled by someone who can write the file (but is not root):
- The key holds what such a writer cannot put back: the inode's change time (`utime` restores mtime but sets
  ctime to now), and the inode generation (FS_IOC_GETVERSION, where the file system has one), besides device,
  inode, size and mtime. A replaced file is another inode; a rewritten one has a new ctime.
- "Racy" entries are not cached: a file changed less than `_SETTLE_NS` before it was read could be changed again
  within the same tick of the file system's coarse clock, leaving every stat field as it was. Only entries whose
  ctime is older than that are kept, so any later write lands on a different ctime.
- Key and bytes come from the same open file (fstat on the descriptor, not a stat of the path), and the key is
  taken again after reading: a file written while it was read is measured again, never cached.

Why a path is never simply opened (`open_regular`): whoever can write the directory of a module's executable (the
module's own uid, often) can leave a FIFO there, whose open for reading waits for a writer (on the event loop: the
whole daemon, for ever), or a symlink to a device, whose open acts (/dev/watchdog arms), or take a write lease on the
file, whose open then waits for the lease's holder (45 s a time). So the path is resolved without opening anything
(O_PATH), refused unless that is a regular file, and only then is that very inode opened for reading, without
waiting (O_NONBLOCK: a lease answers EWOULDBLOCK). Either refusal is `Unmeasurable`, a finding like a changed file.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import struct
import time
from pathlib import Path

__all__ = ["MAX_EXECUTABLE_BYTES", "ChangedWhileRead", "PinnedFile", "TooLarge", "Unmeasurable", "cached_digest",
           "file_digest", "open_regular", "pin_file"]

MAX_EXECUTABLE_BYTES = 512 * 1024 * 1024
_FS_IOC_GETVERSION = 0x80087601  # _IOR('v', 1, long) on 64-bit Linux
_SETTLE_NS = 2_000_000_000  # over every file system's timestamp granularity (ext3, FAT: 1-2 s)
_ATTEMPTS = 3
_CACHE_MAX = 4096
_PROC_FD = "/proc/self/fd"
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
_LEASED = "is under another process's write lease (its open would wait for the holder)"

_Key = tuple[int, int, int, int, int, int]
_digests: dict[_Key, str] = {}


class TooLarge(Exception):
    def __init__(self, path: Path | str, size: int, cap: int, *, grew: bool) -> None:
        self.path, self.size, self.cap, self.grew = path, size, cap, grew
        super().__init__(f"{path} grew over the {cap}-byte limit while it was measured" if grew
                         else f"{path} is {size} bytes, over the {cap}-byte measurement limit")


class ChangedWhileRead(OSError):
    """The file kept changing while it was read; no digest names its content."""


class Unmeasurable(OSError):
    """The path names nothing that can be measured without waiting on someone or acting on a device: not a
    regular file (a FIFO, socket, device, directory), or one under another process's write lease. A finding about
    the file (no errno: never the measurer's own shortage), like a changed one."""

    def __init__(self, path: Path | str, why: str) -> None:
        super().__init__(f"{path} {why}")
        self.strerror = why


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))


def _regular(path: Path | str, fd: int) -> None:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        what = next((name for test, name in _KINDS if test(mode)), "of another kind")
        raise Unmeasurable(path, f"is not a regular file (it is {what})")


def open_regular(path: Path | str) -> int:
    """A read-only descriptor of the regular file `path` resolves to (symlinks followed, as exec follows them), or
    `Unmeasurable`; never waits, and never opens what is not a regular file (see the module docstring)."""
    where = os.open(path, os.O_PATH | os.O_CLOEXEC)  # resolves the path; opens nothing (no driver, no FIFO end)
    try:
        _regular(path, where)
        try:
            # the inode just checked, not the path again: a swap of the path meanwhile changes nothing
            fd = os.open(f"{_PROC_FD}/{where}", _READ_FLAGS)
        except BlockingIOError:
            raise Unmeasurable(path, _LEASED) from None
        except FileNotFoundError:
            if Path(_PROC_FD).is_dir():
                raise
            fd = _open_by_path(path, where)  # no /proc here
    finally:
        os.close(where)
    try:
        _regular(path, fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_by_path(path: Path | str, where: int) -> int:
    """Without /proc: the path again, without waiting. A swap of the path since it was resolved could reach a
    device's open (never a FIFO's wait), which the caller refuses after; the inode must be the one checked."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except BlockingIOError:
        raise Unmeasurable(path, _LEASED) from None
    first, now = os.fstat(where), os.fstat(fd)
    if (first.st_dev, first.st_ino) != (now.st_dev, now.st_ino):
        os.close(fd)
        raise ChangedWhileRead(f"{path} was replaced while it was opened")
    return fd


def _generation(fd: int) -> int:
    try:
        raw = fcntl.ioctl(fd, _FS_IOC_GETVERSION, b"\0" * 8)
    except OSError:
        return -1  # not supported here (tmpfs, overlayfs, ...): the other fields still hold
    return int(struct.unpack("q", raw)[0])


def _key(fd: int) -> tuple[_Key, int]:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, _generation(fd)), st.st_ctime_ns


def _hash(fd: int, path: Path | str, cap: int) -> str:
    h = hashlib.sha256()
    read = 0
    while chunk := os.pread(fd, 1 << 20, read):  # pread: no shared file offset to disturb or be disturbed by
        read += len(chunk)
        if read > cap:
            raise TooLarge(path, read, cap, grew=True)
        h.update(chunk)
    return "sha256:" + h.hexdigest()


class PinnedFile:
    """A file held open since it was measured: whatever happens to its path, `changed()` says whether the bytes
    of this very inode were written since. The process engine pins a module's executable when it starts it."""

    def __init__(self, fd: int, path: Path | str, digest: str, *, key: _Key, ctime_ns: int, read_at: int,
                 cap: int) -> None:
        self.fd, self.path, self.digest, self.cap = fd, path, digest, cap
        self._key = key
        self._settled = ctime_ns < read_at - _SETTLE_NS  # see `_SETTLE_NS`: else the stat fields may not tell

    @property
    def inode(self) -> tuple[int, int]:
        return self._key[0], self._key[1]

    @property
    def settled(self) -> bool:
        """`changed()` is an fstat, not a read (cheap enough for the event loop)."""
        return self._settled

    def changed(self) -> bool:
        """Written since it was measured (or unreadable now: fail closed). A file changed moments before it was
        measured is read again until that is long enough ago for its stat fields to tell."""
        try:
            key, ctime_ns = _key(self.fd)
            if key != self._key:
                return True
            if self._settled:
                return False
            started = time.time_ns()
            if _hash(self.fd, self.path, self.cap) != self.digest or _key(self.fd)[0] != self._key:
                return True
            self._settled = ctime_ns < started - _SETTLE_NS
            return False
        except (OSError, TooLarge):
            return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def pin_file(path: Path | str, cap: int = MAX_EXECUTABLE_BYTES) -> PinnedFile:
    """Open `path`, measure its bytes (never from the cache) and keep it open; the caller closes it."""
    fd = open_regular(path)
    try:
        for _ in range(_ATTEMPTS):
            key, ctime_ns = _key(fd)
            if key[2] > cap:
                raise TooLarge(path, key[2], cap, grew=False)
            started = time.time_ns()
            digest = _hash(fd, path, cap)
            if _key(fd)[0] == key:
                return PinnedFile(fd, path, digest, key=key, ctime_ns=ctime_ns, read_at=started, cap=cap)
        raise ChangedWhileRead(f"{path} kept changing while it was measured")
    except BaseException:
        os.close(fd)
        raise


def cached_digest(path: Path | str, cap: int = MAX_EXECUTABLE_BYTES) -> str | None:
    """The digest the cache holds for the file as it is now, or None (then `file_digest` reads it): a lookup
    cheap enough for the event loop, a read is not."""
    fd = open_regular(path)
    try:
        key, _ = _key(fd)
    finally:
        os.close(fd)
    if key[2] > cap:
        raise TooLarge(path, key[2], cap, grew=False)
    return _digests.get(key)


def file_digest(path: Path | str, cap: int = MAX_EXECUTABLE_BYTES, *, cached: bool = True) -> str:
    """"sha256:<hex>" of a file. A file over `cap` (or growing past it while read) is refused rather than hashed
    for minutes; the cap is checked before the cache, so a smaller cap is never bypassed by an earlier reading.
    `cached=False` reads the bytes whatever the cache holds (the engine does so before it starts a module)."""
    fd = open_regular(path)
    try:
        for _ in range(_ATTEMPTS):
            key, ctime_ns = _key(fd)
            if key[2] > cap:
                raise TooLarge(path, key[2], cap, grew=False)
            if cached and (hit := _digests.get(key)) is not None:
                return hit
            started = time.time_ns()
            digest = _hash(fd, path, cap)
            if _key(fd)[0] != key:
                continue  # written while we read: the digest may mix two contents
            if ctime_ns < started - _SETTLE_NS:
                if len(_digests) >= _CACHE_MAX:
                    _digests.clear()
                _digests[key] = digest
            return digest
        raise ChangedWhileRead(f"{path} kept changing while it was measured")
    finally:
        os.close(fd)
