"""Crash-safe file writes: a reader sees the old content or the new, never a torn file."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir", "private_dir", "remove_durably"]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dir(path: Path, mode: int = 0o700) -> Path:
    """Create ``path`` (and parents) and make sure the leaf has exactly ``mode``."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    if (path.stat().st_mode & 0o777) != mode:
        os.chmod(path, mode)
    return path


def atomic_write(path: Path, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None,
                 sync_dir: bool = True, *, exact_mode: bool = False) -> None:
    """Write temp, fsync, rename over ``path``, fsync the directory (unless the caller fsyncs it once for several
    files: ``sync_dir=False``). ``owner`` (uid, gid): given to the temp file before anything is written to it, so
    the file is never readable by anyone but its owner(s) at any point. ``exact_mode``: ``mode`` as given, not
    narrowed by the umask."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            if exact_mode:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if sync_dir:
        fsync_dir(path.parent)


def remove_durably(path: Path) -> bool:
    """Unlink and fsync the directory; False if it did not exist."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True
