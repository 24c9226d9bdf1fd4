"""Which container a process runs in, read from /proc/<pid>/cgroup.

Layouts (cgroup v1 lines `hierarchy:controllers:path`, v2 the single `0::path` line):
docker `/docker/<id>`, `/system.slice/docker-<id>.scope`; podman `/libpod_parent/libpod-<id>`,
`/machine.slice/libpod-<id>.scope[/container]`, `.../libpod-conmon-<id>.scope` (the monitor, not the container);
containerd/CRI `/kubepods/.../<id>`, `cri-containerd-<id>.scope`. Ids are 64 hex digits. If the lines name two
different containers, the answer is None: ambiguity is never resolved in the caller's favour.
"""

from __future__ import annotations

import re

__all__ = ["container_id_from_cgroup", "read_container_id"]

_ID = r"([0-9a-f]{64})"
_PATTERNS = [
    re.compile(rf"/docker/{_ID}(?:/|$)"),
    re.compile(rf"/docker-{_ID}\.scope(?:/|$)"),
    re.compile(rf"/libpod-{_ID}(?:\.scope)?(?:/|$)"),
    re.compile(rf"/cri-containerd-{_ID}\.scope(?:/|$)"),
    re.compile(rf"/crio-{_ID}\.scope(?:/|$)"),
]
# Kubernetes: the last id component after the first "/kubepods...". Not one regex ("/kubepods.*/<id>"): tried from
# every "/kubepods" in a 4 KB path of them, it took ~1.3 ms a line, and the path is the caller's to make wherever it
# may make cgroups (a systemd user session's delegated subtree).
_KUBEPODS = "/kubepods"
_ID_COMPONENT = re.compile(rf"/{_ID}(?=/|$)")


def container_id_from_cgroup(text: str) -> str | None:
    found: set[str] = set()
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = parts[2]
        if "libpod-conmon-" in path:
            continue  # podman's monitor process, outside the container
        for pattern in _PATTERNS:
            m = pattern.search(path)
            if m:
                found.add(m.group(1))
                break
        else:
            kube = _kubepods_id(path)
            if kube is not None:
                found.add(kube)
    return found.pop() if len(found) == 1 else None


def _kubepods_id(path: str) -> str | None:
    start = path.find(_KUBEPODS)
    if start < 0:
        return None
    last = None
    for last in _ID_COMPONENT.finditer(path, start + len(_KUBEPODS)):  # noqa: B007  (the last one is wanted)
        pass
    return last.group(1) if last is not None else None


def read_container_id(pid: int) -> str | None:
    try:
        with open(f"/proc/{int(pid)}/cgroup") as f:  # noqa: PTH123  (not pathlib: it interns every pid it meets)
            return container_id_from_cgroup(f.read())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
