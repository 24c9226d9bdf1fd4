"""Writing the per-service files of ``edgeward config apply``: each readable by its service's user only, and
rewritten only when its content changed (so that exactly the services whose file changed are restarted).

In the packaged deployment each service runs as its own system user, with aziot's names (access/table.py names
them too); the module runtime stays root. A file goes to its service's user when that user exists and apply runs
as root; otherwise it belongs to whoever runs apply, as before. Either way it is mode 0600 from the moment it
exists (fsutil.atomic_write gives the temp file its owner before writing to it).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..fsutil import atomic_write, remove_durably
from .super_config import SERVICE_FILES

__all__ = ["FILE_MODE", "SERVICE_UNITS", "SERVICE_USERS", "FileResult", "file_owners", "planned", "units_to_restart",
           "write_service_files"]

FILE_MODE = 0o600
# Who owns each file in the packaged deployment; edged.toml stays root's (the module runtime runs as root, without
# CAP_DAC_OVERRIDE: it reads only its own file).
SERVICE_USERS = {"keyd.toml": "aziotks", "certd.toml": "aziotcs", "identityd.toml": "aziotid",
                 "tpmd.toml": "aziottpm"}
# The systemd unit that reads each file, in the order they are restarted (a service before those that call it).
SERVICE_UNITS = {"tpmd.toml": "edgeward-tpmd", "keyd.toml": "edgeward-keyd", "certd.toml": "edgeward-certd",
                 "identityd.toml": "edgeward-identityd", "edged.toml": "edgeward-edged"}

Change = Literal["new", "changed", "unchanged", "removed"]


@dataclass(frozen=True)
class FileResult:
    name: str
    change: Change
    owner: tuple[int, int] | None = None  # (uid, gid) given to it; None: whoever runs apply
    fixed: bool = False  # content unchanged, but its owner or mode was put right


def file_owners(users: Mapping[str, str] = SERVICE_USERS) -> dict[str, tuple[int, int]]:
    """(uid, gid) for each file whose service user exists, when this runs as root (only root can give a file
    away); the group is the user's own group when there is one, else its primary group."""
    if os.geteuid() != 0:
        return {}
    out: dict[str, tuple[int, int]] = {}
    for name, user in users.items():
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            continue
        try:
            gid = grp.getgrnam(user).gr_gid
        except KeyError:
            gid = pw.pw_gid
        out[name] = (pw.pw_uid, gid)
    return out


def _current(path: Path) -> bytes | None:
    """What is on disk (None: nothing); a symlink or anything but a regular file reads as different content."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return b""
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return b""
        return f.read()


def _put_right(path: Path, data: bytes, owner: tuple[int, int] | None) -> bool:
    """An unchanged file keeps its content, but gets the owner and mode it should have; True if it had to."""
    st = path.lstat()
    wanted = owner or (os.geteuid(), os.getegid())
    if stat.S_IMODE(st.st_mode) == FILE_MODE and (st.st_uid, st.st_gid) == wanted:
        return False
    if os.geteuid() == 0:
        os.chmod(path, FILE_MODE, follow_symlinks=False)  # narrowed first, then given away
        os.chown(path, *wanted, follow_symlinks=False)
    else:  # only root can change a file's owner: a new file of our own, with the same content
        atomic_write(path, data, mode=FILE_MODE)
    return True


def write_service_files(texts: Mapping[str, str], out_dir: Path,
                        owners: Mapping[str, tuple[int, int]]) -> list[FileResult]:
    """Write each file whose content differs from what is on disk (atomically, mode 0600, owned as ``owners``
    says); leave the others as they are, their owner and mode put right. A per-service file apply no longer writes
    (tpmd.toml, once no TPM is configured) is removed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name, text in texts.items():
        path, data, owner = out_dir / name, text.encode(), owners.get(name)
        current = _current(path)
        if current == data:
            results.append(FileResult(name, "unchanged", owner, _put_right(path, data, owner)))
            continue
        atomic_write(path, data, mode=FILE_MODE, owner=owner)
        results.append(FileResult(name, "new" if current is None else "changed", owner))
    for name in SERVICE_FILES.values():
        if name not in texts and remove_durably(out_dir / name):
            results.append(FileResult(name, "removed"))
    return results


def planned(texts: Mapping[str, str], out_dir: Path) -> list[FileResult]:
    """What :func:`write_service_files` would do, doing nothing (``--dry-run``)."""
    results = []
    for name, text in texts.items():
        current = _current(out_dir / name)
        change: Change = "new" if current is None else "unchanged" if current == text.encode() else "changed"
        results.append(FileResult(name, change))
    results += [FileResult(name, "removed") for name in SERVICE_FILES.values()
                if name not in texts and (out_dir / name).exists()]
    return results


def units_to_restart(results: Iterable[FileResult]) -> list[str]:
    """The units whose file is new or changed, in :data:`SERVICE_UNITS` order. A unit whose file was removed is
    not restarted: it would only fail for want of its file."""
    changed = {r.name for r in results if r.change in ("new", "changed")}
    return [unit for name, unit in SERVICE_UNITS.items() if name in changed]
