"""A file the operator names on the command line (`support-bundle -o`, `attest keylime-policy -o`, `init -o`,
`config import|mp -o`), written safely when the CLI runs as root in a directory someone else controls.

Opening the name with O_CREAT|O_TRUNC followed a symlink planted there (root then truncated and overwrote any file
the link named) and wrote into a file planted there, keeping its owner and mode (its owner then read a support
bundle: session 14, brk14b support_bundle_symlink). Here the content goes to a new file (O_EXCL|O_NOFOLLOW, its
mode given at creation) in the target's directory, renamed over the name only if nothing is there or a regular file
of the invoking user is: a symlink, a directory, a device or FIFO, or someone else's file is refused, untouched.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..fsutil import atomic_write

__all__ = ["OutputRefused", "check_output", "write_output"]


class OutputRefused(Exception):
    """The output name is taken by something the CLI must not replace; the message says what and what to do."""


def check_output(path: Path) -> None:
    """Raise OutputRefused unless ``path`` is absent or a regular file owned by the effective uid (the caller may
    check this before long work, so that it fails early; :func:`write_output` checks again)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise OutputRefused(f"cannot use {path}: {e.strerror or e}") from None
    if stat.S_ISLNK(st.st_mode):
        raise OutputRefused(f"{path} is a symbolic link: not written through (remove it, or name another file)")
    if not stat.S_ISREG(st.st_mode):
        raise OutputRefused(f"{path} exists and is not a regular file: not replaced")
    if st.st_uid != os.geteuid():
        raise OutputRefused(f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}): not "
                            "replaced (remove it, or name another file)")


def write_output(path: Path, data: bytes, mode: int = 0o600, *, exact_mode: bool = False) -> None:
    """Write ``data`` as a new file of ``mode`` (less the umask, unless ``exact_mode``) renamed to ``path``;
    OutputRefused if ``path`` is taken by anything but the caller's own regular file (then nothing is written), or
    it cannot be written.

    A rename replaces the directory entry, never the inode behind it: a symlink or hard link swapped in after the
    check is replaced itself, and whatever it named is untouched."""
    check_output(path)
    try:
        atomic_write(path, data, mode & 0o777, exact_mode=exact_mode)
    except OSError as e:
        raise OutputRefused(f"cannot write {path}: {e.strerror or e}") from None
