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

__all__ = ["make_trusted_dir", "untrusted_dir", "untrusted_file"]


def _link_problem(path: Path, st: os.stat_result, trusted: frozenset[int]) -> str | None:
    """A symbolic link may be re-pointed by its owner, even in a sticky directory."""
    if st.st_uid not in trusted:
        return f"{path} is a symbolic link owned by uid {st.st_uid}, neither root nor Edgeward's user"
    return None


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
            if stat.S_ISLNK(st.st_mode):  # where it leads is checked as resolved; who may re-point it, here
                problem = _link_problem(part, st, trusted)
                if problem is not None:
                    return problem
                continue
            if not stat.S_ISDIR(st.st_mode):
                return f"{part} is not a directory"
            problem = _problem(part, st, i == len(chain) - 1, trusted)
            if problem is not None:
                return problem
    return None


def make_trusted_dir(path: Path, mode: int = 0o755) -> str | None:
    """Make the missing directories of ``path`` (``mode``, whatever the umask), then say why what is there cannot be
    trusted, or None. Made first and checked after: a directory someone else made in between is theirs, and the
    check refuses it; one checked while missing could be made by anyone before Edgeward gets to it."""
    missing = [p for p in _chain(path.absolute()) if not os.path.lexists(p)]
    for part in missing:
        try:
            part.mkdir(mode)
        except FileExistsError:
            continue  # made by someone else meanwhile: the check below judges it
        except OSError as e:
            return f"{part} cannot be made: {e.strerror}"
        os.chmod(part, mode)
    return untrusted_dir(path)


def untrusted_file(path: Path) -> str | None:
    """Why the file at ``path`` (a config file) cannot be trusted to say what Edgeward does, or None: it and every
    directory on the way must be root's or Edgeward's user's and writable by no one else."""
    problem = untrusted_dir(path.absolute().parent)
    if problem is not None:
        return problem
    trusted = frozenset({0, os.geteuid()})
    for stat_of, where in ((os.lstat, path), (os.stat, path.resolve())):
        try:
            st = stat_of(where)
        except FileNotFoundError:
            return None  # the reader says it is missing
        if stat.S_ISLNK(st.st_mode):
            problem = _link_problem(where, st, trusted) or untrusted_dir(path.resolve().parent)
            if problem is not None:
                return problem
            continue
        problem = _problem(where, st, True, trusted)
        if problem is not None:
            return problem
    return None
