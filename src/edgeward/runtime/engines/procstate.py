"""What the process engine remembers across daemon restarts: one JSON file per module, written atomically.

A record holds the module's spec (to start it again), its last known state, and the running process named by
(pid, start time) and the boot it ran in, so the next daemon can find a process the previous one left behind
without ever mistaking a recycled pid for it: (pid, start time) is unique over one boot only, and after a reboot
last boot's pair can name an unrelated process of this one.

It also holds the uids given to sandboxed modules that name no `User` (`sandbox-uids.json`): one per module name,
kept when the module is removed, so a re-created module gets its files back and another module never inherits
them.
"""

from __future__ import annotations

import functools
import json
import logging
import pwd
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ...fsutil import atomic_write, private_dir, remove_durably
from ..engine import ModuleSpec, ModuleState, ModuleStatus

__all__ = ["ModuleRecord", "RecordStore", "current_boot_id"]

log = logging.getLogger(__name__)


@functools.cache
def current_boot_id() -> str | None:
    """This boot's id (the kernel makes a new one at every boot); None where it cannot be read, and then no
    record names a live process (see `ModuleRecord.boot_id`)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:  # noqa: PTH123
            text = f.read().strip()
    except OSError:
        return None
    return text or None


@dataclass
class ModuleRecord:
    name: str
    engine_id: str
    image: str
    image_id: str
    env: dict[str, str] = field(default_factory=dict)
    create_options: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    workload_dir: str | None = None
    restart_policy: str = "never"
    state: ModuleState = "created"
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    restart_count: int = 0
    pid: int | None = None
    pid_start: int | None = None  # clock ticks since boot: with pid, names the process over the whole boot
    # The boot (current_boot_id) pid and pid_start were read in. A record of another boot, or of none (written
    # before boot ids were recorded), names no live process: it is never signalled.
    boot_id: str | None = None
    want_running: bool = False  # started and neither stopped by a caller nor given up on by the restart policy
    sandbox_uid: int | None = None  # the dedicated uid (and gid) of a sandboxed module that names no User
    # The digest of the executable measured just before the running process was started (None: not started by
    # this version). Differing from `image_id`, it says the process runs code other than what was registered,
    # even if the file was put back since.
    launched_image_id: str | None = None

    @classmethod
    def from_spec(cls, spec: ModuleSpec, engine_id: str, image_id: str) -> ModuleRecord:
        return cls(name=spec.name, engine_id=engine_id, image=spec.image, image_id=image_id, env=dict(spec.env),
                   create_options=dict(spec.create_options), labels=dict(spec.labels),
                   workload_dir=str(spec.workload_dir) if spec.workload_dir is not None else None,
                   restart_policy=spec.restart_policy)

    def spec(self) -> ModuleSpec:
        return ModuleSpec(name=self.name, image=self.image, env=self.env, create_options=self.create_options,
                          labels=self.labels, workload_dir=Path(self.workload_dir) if self.workload_dir else None,
                          restart_policy=self.restart_policy,  # type: ignore[arg-type]
                          pull_policy="never")

    def status(self) -> ModuleStatus:
        return ModuleStatus(name=self.name, engine_id=self.engine_id, state=self.state, image=self.image,
                            image_id=self.image_id, pid=self.pid if self.state == "running" else None,
                            exit_code=self.exit_code, started_at=self.started_at, finished_at=self.finished_at,
                            labels=dict(self.labels), restart_count=self.restart_count)


class RecordStore:
    """`<state_dir>/modules/<name>.json`, plus a counter that keeps engine ids unique across re-creations."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = private_dir(state_dir)
        self.modules = private_dir(state_dir / "modules")

    def load_all(self) -> list[ModuleRecord]:
        known = {f.name for f in fields(ModuleRecord)}
        out: list[ModuleRecord] = []
        for path in sorted(self.modules.glob("*.json")):
            try:
                raw = json.loads(path.read_bytes())
                record = ModuleRecord(**{k: v for k, v in raw.items() if k in known})
            except (OSError, ValueError, TypeError) as e:
                log.error("ignoring unreadable module record %s: %s", path.name, e)
                continue
            if record.name + ".json" != path.name:
                log.error("ignoring module record %s: it names module %r", path.name, record.name)
                continue
            out.append(record)
        return out

    def save(self, record: ModuleRecord) -> None:
        atomic_write(self.modules / f"{record.name}.json", json.dumps(asdict(record), sort_keys=True).encode())

    def delete(self, name: str) -> None:
        remove_durably(self.modules / f"{name}.json")

    def sandbox_uid(self, name: str, base: int, count: int) -> int:
        """The module's dedicated uid: the one it had before, else the lowest of [base, base+count) that no other
        module holds and no account in the user database uses."""
        path = self.state_dir / "sandbox-uids.json"
        try:
            raw = json.loads(path.read_bytes())
            table = {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        except FileNotFoundError:
            table = {}
        except (OSError, ValueError, TypeError) as e:
            # Refuse rather than start over: a fresh table would hand out uids that other modules hold.
            raise OSError(f"{path} is unreadable ({e}); fix or remove it to reallocate sandbox uids") from None
        known = table.get(name)
        if known is not None and base <= known < base + count:
            return known
        taken = set(table.values())
        for uid in range(base, base + count):
            if uid in taken:
                continue
            try:
                pwd.getpwuid(uid)
                continue  # a real account: its files are not the module's
            except KeyError:
                pass
            table[name] = uid
            atomic_write(path, json.dumps(table, sort_keys=True).encode())
            return uid
        raise OSError(f"all {count} sandbox uids from {base} are taken")

    def next_id(self) -> int:
        path = self.state_dir / "next-id"
        try:
            current = int(path.read_text())
        except (OSError, ValueError):
            current = 1
        atomic_write(path, str(current + 1).encode())
        return current
