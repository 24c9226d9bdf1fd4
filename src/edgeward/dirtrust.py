"""Whether a state or run directory is Edgeward's alone. They hold the master key, the keys, the audit log and the
sockets: a user who may rename an entry on the way to them (own a directory of the path, or write to one that is not
sticky) can swap them for their own, and the daemon would start on a master key of that user's choosing.

Checked like sshd checks a home directory: every existing directory from / to the one named, as written and as
resolved, must be owned by root or by the user Edgeward runs as, and writable by no one else; a sticky directory
(/tmp) may be on the way, as others cannot rename what is ours inside it. Parts not made yet are made by Edgeward,
privately."""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["untrusted_dir"]


def _problem(path: Path, st: os.stat_result, final: bool, trusted: frozenset[int]) -> str | None:
    if st.st_uid not in trusted:
        return f"{path} is owned by uid {st.st_uid}, neither root nor the user Edgeward runs as"
    others = st.st_mode & 0o022
    if others and (final or not st.st_mode & stat.S_ISVTX):
        who = "its group and others" if others == 0o022 else "its group" if others & 0o020 else "others"
        return f"{path} is writable by {who} (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _chain(path: Path) -> list[Path]:
    return [*reversed(path.parents), path]


def untrusted_dir(path: Path) -> str | None:
    """Why ``path`` cannot be trusted to hold Edgeward's state, or None."""
    trusted = frozenset({0, os.geteuid()})
    absolute = path.absolute()
    for chain, stat_of in ((_chain(absolute), os.lstat), (_chain(absolute.resolve()), os.stat)):
        for i, part in enumerate(chain):
            try:
                st = stat_of(part)
            except FileNotFoundError:
                break  # the rest is made by Edgeward
            if stat.S_ISLNK(st.st_mode):
                continue  # the directory holding it was checked; where it leads is checked as resolved
            if not stat.S_ISDIR(st.st_mode):
                return f"{part} is not a directory"
            problem = _problem(part, st, i == len(chain) - 1, trusted)
            if problem is not None:
                return problem
    return None
