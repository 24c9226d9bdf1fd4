"""The measurement of a binary: sha256 of its bytes, size-capped, and cached by (device, inode, size, mtime) so
re-measuring an unchanged file is a stat, not a read. The process engine measures at creation and the integrity
monitor and attestation re-measure on every pass: all through this one function."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["MAX_EXECUTABLE_BYTES", "TooLarge", "file_digest"]

MAX_EXECUTABLE_BYTES = 512 * 1024 * 1024
_digests: dict[tuple[int, int, int, int], str] = {}


class TooLarge(Exception):
    def __init__(self, path: Path | str, size: int, cap: int, *, grew: bool) -> None:
        self.path, self.size, self.cap, self.grew = path, size, cap, grew
        super().__init__(f"{path} grew over the {cap}-byte limit while it was measured" if grew
                         else f"{path} is {size} bytes, over the {cap}-byte measurement limit")


def file_digest(path: Path | str, cap: int = MAX_EXECUTABLE_BYTES) -> str:
    """"sha256:<hex>" of a file. A file over `cap` (or growing past it while read) is refused rather than hashed
    for minutes; the cap is checked before the cache, so a smaller cap is never bypassed by an earlier reading."""
    st = Path(path).stat()
    if st.st_size > cap:
        raise TooLarge(path, st.st_size, cap, grew=False)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _digests.get(key)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    read = 0
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            read += len(chunk)
            if read > cap:
                raise TooLarge(path, read, cap, grew=True)
            h.update(chunk)
    digest = "sha256:" + h.hexdigest()
    if len(_digests) > 4096:
        _digests.clear()
    _digests[key] = digest
    return digest
