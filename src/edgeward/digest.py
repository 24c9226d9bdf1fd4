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
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import time
from pathlib import Path

__all__ = ["MAX_EXECUTABLE_BYTES", "ChangedWhileRead", "PinnedFile", "TooLarge", "cached_digest", "file_digest",
           "pin_file"]

MAX_EXECUTABLE_BYTES = 512 * 1024 * 1024
_FS_IOC_GETVERSION = 0x80087601  # _IOR('v', 1, long) on 64-bit Linux
_SETTLE_NS = 2_000_000_000  # over every file system's timestamp granularity (ext3, FAT: 1-2 s)
_ATTEMPTS = 3
_CACHE_MAX = 4096

_Key = tuple[int, int, int, int, int, int]
_digests: dict[_Key, str] = {}


class TooLarge(Exception):
    def __init__(self, path: Path | str, size: int, cap: int, *, grew: bool) -> None:
        self.path, self.size, self.cap, self.grew = path, size, cap, grew
        super().__init__(f"{path} grew over the {cap}-byte limit while it was measured" if grew
                         else f"{path} is {size} bytes, over the {cap}-byte measurement limit")


class ChangedWhileRead(OSError):
    """The file kept changing while it was read; no digest names its content."""


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
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
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
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
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
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
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
