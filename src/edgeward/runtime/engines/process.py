"""Modules as supervised host processes, for devices without a container engine.

What a module is here: an executable file (its "image", measured by sha256), run with the create options read by
`proclaunch`, optionally inside a bubblewrap sandbox, in its own session and process group, with stdout and stderr
captured line by line (`proclogs`) and its definition kept in `<state_dir>/modules/<name>.json` (`procstate`).

Decisions a reader should know:
- **A process left running by a previous daemon is stopped, never adopted.** Its stdout and stderr were pipes to
  the daemon that died, so it can no longer log (its next write may even kill it with SIGPIPE); it is not our
  child, so its exit code would be lost; a sandboxed one dies with its supervisor anyway. Half-supervising it
  would break the log, restart and state guarantees, so the new daemon stops it (SIGTERM, then SIGKILL, whole
  process group and tree) and, like Docker's restart policies across a dockerd restart, starts afresh every
  module that should be running and has a restart policy other than "never". The leftover is recognised by its
  recorded pid *and* start time *and* boot id, so a pid recycled by an unrelated process is never signalled, nor
  a process of a later boot that happens to have last boot's (pid, start time). A record without a boot id
  (written by an earlier version) is from an unknown boot and never signalled either; what a previous daemon of
  this boot left in the module's cgroup is killed all the same (cgroups do not outlive a boot).
- **A graceful stop of the daemon (SIGTERM, SIGINT) stops every host-process module**, all at once (SIGTERM to
  its process group and tree, SIGKILL after `stop_timeout`), and keeps its wish to run, so the next daemon starts
  it again. aziot-edged leaves containers running on stop, and so does Edgeward (`engines/moby.py`): their engine
  keeps logging and supervising them. A host process has no one else: its output goes to pipes the daemon reads,
  its exit code only the daemon can collect, and the next daemon would stop it anyway (see above) — left running,
  it would be an unsupervised process holding a module's identity until then.
- **Restart backoff** is exponential: `base * 2**n` seconds after the n-th consecutive failure, capped (IoT Edge's
  agent uses 5 minutes as its ceiling too), and n goes back to 0 after a run that lasted `stable_after` seconds:
  a module that crashes once a day restarts at once, a crash loop does not spin the CPU. "on-unhealthy" acts as
  "on-failure" (there are no health checks for host processes).
- **States**: created (never started), running, stopped (exit 0, or stopped by a caller or by the engine),
  failed (non-zero exit or killed by a signal: exit code 128+signal, as Docker reports it), dead (could not be
  started, or vanished while no daemon watched it, so its exit code is unknown).
- **When the main process exits, the rest of its process group is killed**, as a container's processes die with
  its pid 1. Descendants that left the group (`setsid`, or the sandbox's own session) are found through the ppid
  chain while the main process lives. **Each module also runs in a cgroup of its own** (`proccgroup`, where the
  daemon can make cgroups: cgroup v2, root), entered before any of the module's code runs: a shell started in
  its place waits on its stdin until the engine has moved it there, then execs the module. A daemonising process
  that left both the group and the tree is still in it, and dies with the module's main process, its stop, its
  removal, or at the next daemon's start if the daemon died first. Without cgroups it is out of reach, as before.
- In the sandbox the supervised pid is bubblewrap's; `engine_id_of_pid` maps every descendant of it, including the
  module's own process whose host pid differs from the pid it sees in its namespace.
- **The executable is measured again, from its bytes, before every start** (by a caller, by the restart policy,
  by a new daemon), and kept open ("pinned") while the process it started runs; the digest is recorded
  (`launched_image_id`). The engine starts it even when it differs from the registration: the integrity policy
  (log, stop, refuse) decides, and attestation refuses its calls. `launch_finding` keeps saying so for as long
  as that process runs, even if the file is put back afterwards; it also says so when the pinned file was
  written after it was measured, or when the path named another file right after the start (the file was
  swapped during the start). Left open: a swap there and back within the exec itself.
- **Root host modules need `allow_elevated_docker_permissions`** (`allow_elevated`, off unless the operator
  turns it on), and no module runs as a `[[principal]]`'s uid (`principal_uids`): both checked at create and
  before every start, so a module created while the setting was on does not start once it is off (see
  `proclaunch`).
- **A module's uid is its own** (`_own_uid`): a process can take another process's open connections
  (pidfd_getfd, ptrace) when it has the same uid, and the workload and management APIs attest a connection once,
  by the credentials of the process that opened it; so two modules of one uid are one principal. A `User` whose
  uid another module of this engine has (running or not; the edge agent too) is refused with 409 at create, at
  update, at every start and for modules restored at the daemon's start (two restored records of one uid: neither
  starts); a `User` in the sandbox uid range is refused (400), that range is the engine's to allocate. Exempt:
  Edgeward's own uid (root, only with `allow_elevated`; a daemon that is not root runs every module as itself):
  such a module can already take Edgeward's own connections, and a second one adds nothing. uid 65534 (`nobody`)
  is allowed, once, with a warning: it is the common recipe (the demo uses it) and no Edgeward socket trusts it
  (unlike the service accounts, which are refused), but other services run as it and can take the module's
  connections; README's known limits say so.
- **A module's group is its user's own too, and its WorkingDir is entered with its user's rights** (brk14b; see
  `proclaunch`): "uid:gid" must name the uid's primary group (or, without a passwd entry, the gid of the uid's
  number, not a group the system names), else 400; and a module with a User enters WorkingDir itself, after the
  drop, never as root before it. `_check_workdir` asks a process of that user, at every start, whether it can
  enter it: if not, the start is a 400 that says no more than that user could learn.
- **A sandboxed module that names no User runs as a uid of its own** (`sandbox_uid_base` + n, one per module
  name, kept across re-creation, recorded in the engine's state); the sandbox hides the engine's state
  directory and the `hidden` directories (Edgeward's state and run directories) behind an empty tmpfs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from ... import __version__
from ...digest import MAX_EXECUTABLE_BYTES, PinnedFile, TooLarge, file_digest, pin_file
from ...fsutil import private_dir
from ..engine import EngineError, EngineEvent, LogChunk, LogOptions, ModuleNotFound, ModuleSpec, ModuleStatus
from ..model import valid_module_name
from .proccgroup import ModuleCgroups
from .procfs import (
    ATTRIBUTION_DEPTH,
    PAGE_SIZE,
    TICKS_PER_SECOND,
    ProcStat,
    ancestors,
    cgroup_of,
    descendants,
    read_stat,
    send_signal,
)
from .proclaunch import (
    Launch,
    check_executable,
    module_uid,
    needs_sandbox_uid,
    plan_launch,
    runs_as_root,
    workdir_check,
)
from .proclogs import ModuleLogs, pump, take
from .procstate import ModuleRecord, RecordStore, current_boot_id

__all__ = ["DEFAULT_SANDBOX_UID_BASE", "MAX_EXECUTABLE_BYTES", "ProcessEngine", "backoff_delay"]

log = logging.getLogger(__name__)

_DRAIN_TIMEOUT = 5.0  # after the group is killed, how long a pipe held by an escaped process may stay open
# Started in the module's place: waits for one line on stdin (the engine writes it once the process is in the
# module's cgroup; EOF, if the engine could not, ends it without running anything), then execs the module's argv
# with stdin on /dev/null, as every module has it.
_CGROUP_GATE = ("/bin/sh", "-c", 'read -r _ && exec "$@" </dev/null', "edgeward-cgroup-gate")
_EVENT_QUEUE = 4096
# Sandboxed modules without a User get uids from here: above the ranges distributions hand to accounts, to
# systemd's dynamic users (61184-65519) and to the usual subordinate-id ranges of rootless containers (100000+,
# 65536 per user), below 2**31 for tools that read uids as signed.
DEFAULT_SANDBOX_UID_BASE = 1_900_000_000
DEFAULT_SANDBOX_UID_COUNT = 65536
_NOBODY = 65534  # the overflow uid: shared by design (see "A module's uid is its own" above)
Phase = Literal["idle", "running", "backoff", "spawning"]
_WORKDIR_CHECK_TIMEOUT = 10.0  # a WorkingDir on a file system that does not answer (a hung NFS mount)


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Seconds to wait before the restart that follows `failures` consecutive quick failures (0: the first)."""
    return float(min(cap, base * 2 ** min(failures, 62)))


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


async def _check_workdir(name: str, launch: Launch) -> None:
    """Before a start: can the module's user enter its WorkingDir? Checked by a process of that user (uid, gid, no
    other groups, as the module runs), so the answer is the kernel's (ACLs, mounts included) and tells the caller
    no more than that user could learn: one message whether the directory is missing, not a directory, or behind
    one it may not pass. What keeps the module out is that it enters the directory itself (`proclaunch`); this only
    turns a module that would exit at once into a clear 400."""
    workdir = launch.workdir
    if workdir is None or launch.uid is None:
        return
    try:
        proc = await asyncio.create_subprocess_exec(
            *workdir_check(workdir), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, env={}, cwd="/", start_new_session=True, user=launch.uid,
            group=launch.gid, extra_groups=[])
    except OSError as e:
        raise EngineError(f"cannot start module {name}: cannot check its createOptions.WorkingDir: "
                          f"{e.strerror or e}", 500) from None
    try:
        async with asyncio.timeout(_WORKDIR_CHECK_TIMEOUT):
            code: int | None = await proc.wait()
    except TimeoutError:
        code = None
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):  # (a process stuck in the file system dies when it returns)
                await proc.wait()
    if code != 0:
        late = " in time" if code is None else ""
        raise EngineError(f"cannot start module {name}: its createOptions.WorkingDir {workdir} cannot be entered "
                          f"by its user (uid {launch.uid}, gid {launch.gid}){late}: it does not exist, is not a "
                          f"directory, or that user may not pass a directory on its path", 400)


def _exit_code(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode


def _executable_digest(path: Path, cap: int, *, cached: bool = True) -> str:
    try:
        return file_digest(path, cap, cached=cached)
    except OSError as e:
        raise EngineError(f"cannot measure {path}: {e.strerror or e}", 400) from None
    except TooLarge as e:
        if e.grew:
            raise EngineError(f"{path} grew over the {cap}-byte limit while it was measured", 400) from None
        raise EngineError(f"{path} is {e.size} bytes, over the {cap}-byte limit for a host-process module's "
                          f"executable", 400) from None


@dataclass(eq=False)
class _Module:
    record: ModuleRecord
    logs: ModuleLogs
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    phase: Phase = "idle"
    proc: asyncio.subprocess.Process | None = None
    sandbox: bool = False
    supervisor: asyncio.Task[None] | None = None
    stopping: bool = False  # a caller asked it to stop: its exit is a "stop", not a failure to restart
    pin: PinnedFile | None = None  # the executable as measured just before the running process was started
    swapped: bool = False  # right after that start, the image path named another file than the one measured

    def unpin(self) -> None:
        if self.pin is not None:
            self.pin.close()
            self.pin = None


class _Events:
    """One subscriber's queue; registered when created, so no event between `events()` and iteration is lost."""

    def __init__(self, subscribers: set[asyncio.Queue[EngineEvent | None]], closed: bool) -> None:
        self._subscribers = subscribers
        self._queue: asyncio.Queue[EngineEvent | None] = asyncio.Queue(_EVENT_QUEUE)
        if closed:
            self._queue.put_nowait(None)
        else:
            subscribers.add(self._queue)

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> EngineEvent:
        item = await self._queue.get()
        if item is None:
            self._subscribers.discard(self._queue)
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        self._subscribers.discard(self._queue)


class ProcessEngine:
    """The `ModuleEngine` of host processes. State is loaded (and leftovers settled) on first use."""

    kind = "process"

    def __init__(self, state_dir: Path, *, stop_timeout: float = 10.0, backoff_base: float = 1.0,
                 backoff_cap: float = 300.0, stable_after: float = 60.0, log_max_bytes: int = 10 * 1024 * 1024,
                 max_executable_bytes: int = MAX_EXECUTABLE_BYTES, bwrap: str | None = None,
                 hidden: Sequence[Path] = (), sandbox_uid_base: int = DEFAULT_SANDBOX_UID_BASE,
                 sandbox_uid_count: int = DEFAULT_SANDBOX_UID_COUNT, allow_elevated: bool = False,
                 principal_uids: Iterable[int] = (), cgroups: bool = True) -> None:
        if sandbox_uid_base <= 0 or sandbox_uid_count <= 0 or sandbox_uid_base + sandbox_uid_count > 0xFFFF_FFFF:
            raise ValueError("sandbox uids must be a non-empty range of unprivileged uids")
        self.state_dir = state_dir
        # What a sandbox must not show: the engine's own state (records, logs) and the directories given.
        self.hidden = (state_dir, *hidden)
        # allow_elevated_docker_permissions: may a module run as root (see proclaunch)? Off unless the operator says.
        self.allow_elevated = allow_elevated
        self.principal_uids = frozenset(principal_uids)  # no module runs as a keys/certs/identity principal
        self.sandbox_uid_base = sandbox_uid_base
        self.sandbox_uid_count = sandbox_uid_count
        self.stop_timeout = stop_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.stable_after = stable_after
        self.log_max_bytes = log_max_bytes
        self.max_executable_bytes = max_executable_bytes
        self.bwrap = bwrap or shutil.which("bwrap")
        self._use_cgroups = cgroups  # one cgroup per module where the daemon can make them (see proccgroup)
        self._cgroups: ModuleCgroups | None = None
        self._store: RecordStore | None = None
        self._modules: dict[str, _Module] = {}
        self._subscribers: set[asyncio.Queue[EngineEvent | None]] = set()
        self._load_lock = asyncio.Lock()
        self._closed = False

    # loading and leftovers -------------------------------------------------------------------------------------
    async def _ready(self) -> RecordStore:
        if self._closed:
            raise EngineError("the process engine is shut down", 503)
        if self._store is not None:
            return self._store
        async with self._load_lock:
            if self._store is not None:
                return self._store
            store = RecordStore(self.state_dir)
            if self._use_cgroups:
                self._cgroups = await asyncio.to_thread(ModuleCgroups.for_state, self.state_dir)
            for record in store.load_all():
                mod = _Module(record, self._module_logs(record.name))
                await self._settle_leftover(mod, store)
                self._modules[record.name] = mod
            await self._settle_leftover_cgroups()
            self._store = store
        for mod in list(self._modules.values()):
            if mod.record.want_running and mod.record.restart_policy != "never":
                async with mod.lock:
                    try:
                        await self._start_locked(mod, restarted=True)
                    except EngineError as e:
                        log.error("module %s could not be started again: %s", mod.record.name, e.message)
                        self._set_dead(mod)
        return store

    def _module_logs(self, name: str) -> ModuleLogs:
        return ModuleLogs(private_dir(self.state_dir / "logs" / name), self.log_max_bytes)

    async def _settle_leftover(self, mod: _Module, store: RecordStore) -> None:
        """Stop the process a previous daemon left running (only if pid and start time both match)."""
        rec = mod.record
        if rec.pid is None:
            return
        boot = current_boot_id()
        st = read_stat(rec.pid) if boot is not None and rec.boot_id == boot else None
        if st is None and rec.boot_id != boot:
            log.warning("module %s: its record names pid %d of %s; leaving that pid alone", rec.name, rec.pid,
                        "another boot" if rec.boot_id else "an unknown boot (no boot id recorded)")
        if st is not None and st.start_time == rec.pid_start:
            log.warning("module %s: stopping process %d left running by a previous daemon", rec.name, rec.pid)
            pid, start = rec.pid, st.start_time
            await self._terminate(pid, start, include_leader=True, timeout=self.stop_timeout,
                                  waiter=lambda: self._wait_gone(pid, start))
            rec.state, rec.exit_code = "stopped", None
        else:
            if st is not None:
                log.warning("module %s: pid %d now belongs to another process; leaving it alone", rec.name, rec.pid)
            rec.state, rec.exit_code = "dead", None
        rec.pid = rec.pid_start = rec.boot_id = None
        rec.finished_at = _now()
        if rec.restart_policy == "never":
            rec.want_running = False
        store.save(rec)

    async def _settle_leftover_cgroups(self) -> None:
        """Kill what a previous daemon's modules left in their cgroups (processes that escaped its tree, or all of
        them if it died), and remove the cgroups of modules that no longer exist."""
        cgroups = self._cgroups
        if cgroups is None:
            return
        for name in cgroups.names():
            if cgroups.populated(name):
                log.warning("module %s: killing the processes a previous daemon left in its cgroup", name)
                if not await cgroups.kill_and_wait(name, self.stop_timeout):
                    log.error("module %s: processes left in its cgroup did not die", name)
            if name not in self._modules:
                cgroups.remove(name)

    async def _wait_gone(self, pid: int, start_time: int) -> None:
        """Until the process (not our child) exits: its pidfd becomes readable then."""
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return
        try:
            st = read_stat(pid)
            if st is None or st.start_time != start_time:
                return
            loop = asyncio.get_running_loop()
            gone: asyncio.Future[None] = loop.create_future()

            def exited() -> None:
                if not gone.done():
                    gone.set_result(None)

            loop.add_reader(fd, exited)
            try:
                await gone
            finally:
                loop.remove_reader(fd)
        finally:
            os.close(fd)

    # signalling ------------------------------------------------------------------------------------------------
    @staticmethod
    def _signal_tree(pid: int, start_time: int, sig: signal.Signals, include_leader: bool) -> None:
        """Signal the process group led by `pid` and every descendant (those that left the group too)."""
        root = read_stat(pid)
        if root is None or root.start_time != start_time:
            return
        members = descendants(root)
        if include_leader:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)  # the leader is alive (checked above), so the group id is still ours
        for member in members:
            send_signal(member.pid, member.start_time, sig)

    async def _terminate(self, pid: int, start_time: int, *, include_leader: bool, timeout: float,
                         waiter: Callable[[], Awaitable[object]]) -> None:
        """SIGTERM, wait `timeout` for `waiter()`, then SIGKILL to the whole tree and wait again."""
        await asyncio.to_thread(self._signal_tree, pid, start_time, signal.SIGTERM, include_leader)
        try:
            async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancel on 3.11
                await asyncio.shield(waiter())
            return
        except TimeoutError:
            pass
        await asyncio.to_thread(self._signal_tree, pid, start_time, signal.SIGKILL, True)
        await waiter()

    # supervision -----------------------------------------------------------------------------------------------
    def _plan(self, mod: _Module) -> Launch:
        """How to run the module now; a sandboxed one without User gets its dedicated uid on first need (records
        written before uids were allocated get theirs here)."""
        rec = mod.record
        spec = rec.spec()
        if needs_sandbox_uid(spec) and rec.sandbox_uid is None and os.geteuid() == 0:
            if self._store is None:
                raise EngineError("the process engine is not loaded", 503)
            rec.sandbox_uid = self._allocate_uid(self._store, rec.name)
        launch = plan_launch(spec, self.bwrap, sandbox_uid=rec.sandbox_uid, hidden=self.hidden,
                             allow_elevated=self.allow_elevated, principal_uids=self.principal_uids)
        self._own_uid(rec.name, launch, spec.create_options)
        return launch

    def _own_uid(self, name: str, launch: Launch, options: Mapping[str, Any]) -> None:
        """Refuse a uid another module of this engine has, or one of the sandbox range the engine did not give
        this module (see the module docstring: a uid shared is a module's connections shared)."""
        uid = os.geteuid() if launch.uid is None else launch.uid
        if uid == os.geteuid():
            return  # Edgeward's own uid: only with allow_elevated as root, or a daemon that is not root
        if options.get("User") in (None, ""):
            return  # a sandbox uid the engine allocated: one per module name, and no User may be in the range
        user = f"createOptions.User {options.get('User')!r}"
        base, count = self.sandbox_uid_base, self.sandbox_uid_count
        if base <= uid < base + count:
            raise EngineError(f"{user}: uid {uid} is in the range [{base}, {base + count}) the engine gives "
                              f"sandboxed modules their own uids from; name a uid outside it", 400)
        for other in self._modules.values():
            rec = other.record
            if rec.name != name and module_uid(rec.create_options, rec.sandbox_uid) == uid:
                raise EngineError(f"{user}: uid {uid} is module {rec.name}'s; a module's uid must be its own (a "
                                  f"process of the same uid can take the other module's connections and act as "
                                  f"it): give each module a user of its own", 409)

    def _allocate_uid(self, store: RecordStore, name: str) -> int:
        try:
            return store.sandbox_uid(name, self.sandbox_uid_base, self.sandbox_uid_count)
        except OSError as e:
            raise EngineError(f"no sandbox uid for module {name}: {e}", 500) from None

    async def _pin_launch(self, mod: _Module) -> None:
        """Measure the executable from its bytes (never the cache) just before it is started, and keep it open
        with the process about to run: a start on changed code is then known whatever the file holds later. A
        difference is logged here; the integrity monitor and attestation act on it."""
        rec = mod.record
        path, cap = Path(rec.image), self.max_executable_bytes
        try:
            pin = await asyncio.to_thread(pin_file, path, cap)
        except OSError as e:
            raise EngineError(f"cannot measure {path}: {e.strerror or e}", 400) from None
        except TooLarge as e:
            raise EngineError(str(e), 400) from None
        mod.unpin()
        mod.pin, mod.swapped = pin, False
        rec.launched_image_id = pin.digest
        if pin.digest != rec.image_id:
            log.warning("module %s: %s is now %s, registered %s; starting it on changed code (the integrity "
                        "policy decides what follows)", rec.name, rec.image, pin.digest[:19], rec.image_id[:19])

    @staticmethod
    def _check_started_from_pin(mod: _Module) -> None:
        """Right after the start: the path must still name the measured file, or it was swapped meanwhile."""
        pin = mod.pin
        if pin is None:
            return
        try:
            st = Path(mod.record.image).stat()
            mod.swapped = (st.st_dev, st.st_ino) != pin.inode
        except OSError:
            mod.swapped = True
        if mod.swapped:
            log.warning("module %s: %s was replaced while the module was being started", mod.record.name,
                        mod.record.image)

    async def launch_finding(self, name: str, registered: str) -> str | None:
        """Why the running process of module `name` may run code other than `registered`; None if it runs what
        was measured before its start and that equals `registered` (or if it is not running)."""
        mod = self._modules.get(name)
        if mod is None or mod.phase != "running" or mod.pin is None:
            return None
        pin = mod.pin
        if pin.digest != registered:
            return f"it was started from {pin.path} when that was {pin.digest[:19]}, registered {registered[:19]}"
        if mod.swapped:
            return f"{pin.path} was replaced while it was being started"
        changed = pin.changed() if pin.settled else await asyncio.to_thread(pin.changed)
        if mod.pin is not pin:
            return None  # it exited (or started again) meanwhile: that pin says nothing about what runs now
        if changed:
            return f"the {pin.path} it was started from was written since it was measured"
        return None

    async def _spawn(self, mod: _Module, launch: Launch) -> tuple[asyncio.subprocess.Process, list[int]]:
        """Start the process with our own pipes: asyncio's would make `wait()` hang while a grandchild holds one.
        With cgroups, the process is in the module's cgroup before it runs any of the module's code."""
        await _check_workdir(mod.record.name, launch)
        await self._pin_launch(mod)
        cgroups = self._cgroups
        if cgroups is not None and cgroups.populated(mod.record.name):  # an earlier run's escapee: not this one's
            await cgroups.kill_and_wait(mod.record.name, self.stop_timeout)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        gate_r, gate_w = os.pipe() if cgroups is not None else (-1, -1)
        try:
            proc = await asyncio.create_subprocess_exec(
                *(_CGROUP_GATE if cgroups is not None else ()), *launch.argv,
                stdin=gate_r if cgroups is not None else asyncio.subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                env=dict(launch.env), cwd=launch.cwd, start_new_session=True, user=launch.uid, group=launch.gid,
                extra_groups=[] if launch.uid is not None else None)
        except OSError as e:
            mod.unpin()
            for fd in (out_r, err_r, gate_w):
                if fd >= 0:
                    os.close(fd)
            where = f" ({e.filename})" if e.filename else ""
            raise EngineError(f"cannot start module {mod.record.name}: {e.strerror or e}{where}", 500) from None
        finally:
            for fd in (out_w, err_w, gate_r):
                if fd >= 0:
                    os.close(fd)
        if cgroups is not None:
            await self._release_into_cgroup(mod, cgroups, proc, gate_w, (out_r, err_r))
        self._check_started_from_pin(mod)
        return proc, [out_r, err_r]

    async def _release_into_cgroup(self, mod: _Module, cgroups: ModuleCgroups, proc: asyncio.subprocess.Process,
                                   gate: int, pipes: tuple[int, int]) -> None:
        """Move the waiting process into the module's cgroup, then let it exec the module; if it cannot be moved,
        it never runs the module (the gate's EOF ends it) and the start fails."""
        try:
            try:
                await asyncio.to_thread(cgroups.enter, mod.record.name, proc.pid)
            except OSError as e:
                os.close(gate)
                gate = -1
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                mod.unpin()
                for fd in pipes:
                    os.close(fd)
                raise EngineError(f"cannot start module {mod.record.name}: its cgroup "
                                  f"{cgroups.path(mod.record.name)} cannot take it: {e.strerror or e}", 500) from None
            os.write(gate, b"go\n")
        finally:
            if gate >= 0:
                os.close(gate)

    async def _start_locked(self, mod: _Module, *, restarted: bool) -> None:
        launch = self._plan(mod)
        mod.phase = "spawning"
        try:
            proc, fds = await self._spawn(mod, launch)
        finally:
            mod.phase = "idle"
        mod.sandbox = launch.sandbox
        self._running(mod, proc)
        mod.supervisor = asyncio.create_task(self._supervise(mod, proc, fds), name=f"supervise {mod.record.name}")
        self._emit("start", mod)
        if restarted:
            self._emit("restart", mod)

    def _running(self, mod: _Module, proc: asyncio.subprocess.Process) -> None:
        rec = mod.record
        st = read_stat(proc.pid)
        mod.proc, mod.phase = proc, "running"
        rec.state, rec.pid, rec.pid_start = "running", proc.pid, st.start_time if st is not None else None
        rec.boot_id = current_boot_id()
        rec.exit_code, rec.started_at, rec.finished_at, rec.want_running = None, _now(), None, True
        self._save(mod)

    @staticmethod
    def _sink(mod: _Module, stream: Literal[1, 2]) -> Callable[[Sequence[bytes], Sequence[bytes]], None]:
        def write(lines: Sequence[bytes], pieces: Sequence[bytes]) -> None:
            mod.logs.write_lines(stream, lines, pieces)
        return write

    async def _watch(self, mod: _Module, proc: asyncio.subprocess.Process, fds: list[int]) -> int:
        """Log the process's output until it exits and its pipes are read to the end; its exit code."""
        loop = asyncio.get_running_loop()
        pumps: list[asyncio.Task[None]] = []
        transports: list[asyncio.ReadTransport] = []
        exited = asyncio.Event()  # from then on, what the pipes hold is read at once (up to DRAIN_ALLOWANCE)
        try:
            streams: tuple[Literal[1, 2], ...] = (1, 2)
            for stream in streams:
                reader = asyncio.StreamReader()
                pipe = os.fdopen(fds.pop(0), "rb", buffering=0)  # from here on, `pipe` owns the descriptor
                try:
                    transport, _ = await loop.connect_read_pipe(
                        functools.partial(asyncio.StreamReaderProtocol, reader), pipe)
                except BaseException:
                    pipe.close()
                    raise
                transports.append(transport)
                pumps.append(asyncio.create_task(pump(reader, self._sink(mod, stream), mod.logs.intake, exited)))
            returncode = await proc.wait()
            exited.set()
            # The rest of the group (and of its cgroup) dies with the main process; then the pipes reach their end.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if self._cgroups is not None:
                try:
                    self._cgroups.kill(mod.record.name)
                except OSError as e:
                    log.error("module %s: cannot kill what is left in its cgroup: %s", mod.record.name,
                              e.strerror or e)
            _, pending = await asyncio.wait(pumps, timeout=_DRAIN_TIMEOUT)
            if pending:
                log.warning("module %s: a process outside its group still holds its output; not waiting for it",
                            mod.record.name)
            return returncode
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for transport in transports:
                transport.close()
            for fd in fds:
                os.close(fd)

    def _should_restart(self, mod: _Module, exit_code: int) -> bool:
        policy = mod.record.restart_policy
        return policy == "always" or (policy in ("on-failure", "on-unhealthy") and exit_code != 0)

    async def _supervise(self, mod: _Module, proc: asyncio.subprocess.Process, fds: list[int]) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        rec = mod.record
        try:
            while True:
                began = loop.time()
                exit_code = _exit_code(await self._watch(mod, proc, fds))
                mod.proc = None
                mod.unpin()
                stopping = mod.stopping
                restart = not stopping and self._should_restart(mod, exit_code)
                rec.state = "stopped" if stopping or exit_code == 0 else "failed"
                rec.exit_code, rec.finished_at, rec.pid, rec.pid_start = exit_code, _now(), None, None
                if not stopping and not restart:
                    rec.want_running = False
                mod.phase = "backoff" if restart else "idle"
                self._save(mod)
                mod.logs.end_followers()
                self._emit("die", mod, exit_code)
                if stopping:
                    self._emit("stop", mod)
                if not restart:
                    return
                if loop.time() - began >= self.stable_after:
                    failures = 0
                delay = backoff_delay(failures, self.backoff_base, self.backoff_cap)
                failures += 1
                log.info("module %s exited with %d; restarting in %.1fs", rec.name, exit_code, delay)
                await asyncio.sleep(delay)  # stop(), start() and remove() cancel this wait
                async with mod.lock:
                    try:
                        launch = self._plan(mod)
                        mod.phase = "spawning"
                        proc, fds = await self._spawn(mod, launch)
                    except EngineError as e:
                        log.error("module %s cannot be restarted: %s", rec.name, e.message)
                        self._set_dead(mod)
                        return
                    rec.restart_count += 1
                    mod.sandbox = launch.sandbox
                    self._running(mod, proc)
                    self._emit("start", mod)
                    self._emit("restart", mod)
        finally:
            if mod.phase != "running":
                mod.phase = "idle"

    def _set_dead(self, mod: _Module) -> None:
        mod.phase = "idle"
        mod.record.state, mod.record.want_running, mod.record.finished_at = "dead", False, _now()
        self._save(mod)

    async def _stop_locked(self, mod: _Module, timeout: float, *, forget: bool = True) -> bool:
        """Stop whatever runs or waits to restart; True if there was something. `forget=False` (engine shutdown)
        keeps the wish to run, so the next daemon starts it again."""
        if forget:
            mod.record.want_running = False
        task = mod.supervisor
        if mod.phase == "backoff" and task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            mod.record.state = "stopped"
            self._save(mod)
            self._emit("stop", mod)
            return True
        if mod.phase != "running" or mod.proc is None or task is None:
            self._save(mod)
            return False
        pid, start = mod.proc.pid, mod.record.pid_start
        mod.stopping = True
        try:
            if start is not None:
                await self._terminate(pid, start, include_leader=not mod.sandbox, timeout=timeout,
                                      waiter=lambda: asyncio.gather(task, return_exceptions=True))
            else:  # it exited before its start time could be read; the supervisor is already finishing
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            await asyncio.gather(task, return_exceptions=True)
        finally:
            mod.stopping = False
        return True

    # events ----------------------------------------------------------------------------------------------------
    def _emit(self, action: Literal["create", "start", "die", "stop", "destroy", "restart"], mod: _Module,
              exit_code: int | None = None) -> None:
        event = EngineEvent(action, mod.record.name, mod.record.engine_id, dict(mod.record.labels), exit_code)
        for queue in self._subscribers:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()  # a subscriber that stopped reading loses its oldest events, not memory
            queue.put_nowait(event)

    def events(self) -> AsyncIterator[EngineEvent]:
        return _Events(self._subscribers, self._closed)

    def _save(self, mod: _Module) -> None:
        if self._store is not None and self._modules.get(mod.record.name) is mod:
            self._store.save(mod.record)

    # ModuleEngine --------------------------------------------------------------------------------------------
    async def version(self) -> Mapping[str, str]:
        return {"name": "edgeward-process", "version": __version__}

    async def pull(self, image: str, auth: Mapping[str, Any] | None = None) -> None:
        raise EngineError(f"host-process modules are not pulled: install the executable {image} on the device "
                          f"(with a package or an update agent), then create the module with its path", 400)

    async def image_id(self, image: str) -> str | None:
        try:
            path = check_executable(image)
        except EngineError:
            return None
        return await asyncio.to_thread(_executable_digest, path, self.max_executable_bytes)

    def _get(self, name: str) -> _Module:
        mod = self._modules.get(name)
        if mod is None:
            raise ModuleNotFound(name)
        return mod

    @contextlib.asynccontextmanager
    async def _locked(self, name: str) -> AsyncIterator[_Module]:
        await self._ready()
        mod = self._get(name)
        async with mod.lock:
            if self._modules.get(name) is not mod:  # removed while we waited
                raise ModuleNotFound(name)
            yield mod

    async def check(self, spec: ModuleSpec) -> None:
        """The launch create would plan for ``spec`` (User, Sandbox, elevated permissions, principals' uids) and its
        executable, nothing allocated or stored: a sandboxed module being replaced keeps the uid it has, a new one
        is checked with the first uid of the range (allocation skips principals' and real accounts' uids)."""
        await self._ready()
        if not valid_module_name(spec.name):
            raise EngineError(f"invalid module name {spec.name!r}", 400)
        sandbox_uid = None
        if needs_sandbox_uid(spec) and os.geteuid() == 0:
            current = self._modules.get(spec.name)
            sandbox_uid = current.record.sandbox_uid if current is not None else None
            sandbox_uid = sandbox_uid if sandbox_uid is not None else self.sandbox_uid_base
        # (plan_launch checks the executable too)
        launch = plan_launch(spec, self.bwrap, sandbox_uid=sandbox_uid, hidden=self.hidden,
                             allow_elevated=self.allow_elevated, principal_uids=self.principal_uids)
        self._own_uid(spec.name, launch, spec.create_options)

    async def create(self, spec: ModuleSpec) -> ModuleStatus:
        store = await self._ready()
        if not valid_module_name(spec.name):
            raise EngineError(f"invalid module name {spec.name!r}", 400)
        if spec.name in self._modules:
            raise EngineError(f"module {spec.name} already exists", 409)
        sandbox_uid = self._allocate_uid(store, spec.name) if needs_sandbox_uid(spec) and os.geteuid() == 0 \
            else None
        launch = plan_launch(spec, self.bwrap, sandbox_uid=sandbox_uid, hidden=self.hidden,
                             allow_elevated=self.allow_elevated, principal_uids=self.principal_uids)
        self._own_uid(spec.name, launch, spec.create_options)
        # The registration's reference: read from the bytes, whatever an earlier reading left in the cache.
        image_id = await asyncio.to_thread(_executable_digest, check_executable(spec.image),
                                           self.max_executable_bytes, cached=False)
        if spec.name in self._modules:  # created by a concurrent call while we measured
            raise EngineError(f"module {spec.name} already exists", 409)
        self._own_uid(spec.name, launch, spec.create_options)  # again: another create may have taken it meanwhile
        if launch.uid == _NOBODY:
            log.warning("module %s runs as uid %d (nobody), which other services on this device may use too: "
                        "they can take its connections and act as it; give it a user of its own", spec.name,
                        _NOBODY)
        taken = {m.record.engine_id for m in self._modules.values()}
        engine_id = f"proc-{spec.name}-{store.next_id()}"
        while engine_id in taken:
            engine_id = f"proc-{spec.name}-{store.next_id()}"
        shutil.rmtree(self.state_dir / "logs" / spec.name, ignore_errors=True)  # a removal cut short by a crash
        mod = _Module(ModuleRecord.from_spec(spec, engine_id, image_id), self._module_logs(spec.name))
        mod.record.sandbox_uid = sandbox_uid
        if runs_as_root(launch) and not launch.sandbox:  # only allow_elevated_docker_permissions lets it here
            log.warning("module %s runs as root with every capability (createOptions.User %r): as trusted as "
                        "Edgeward itself (allow_elevated_docker_permissions = true)", spec.name,
                        spec.create_options.get("User"))
        self._modules[spec.name] = mod
        self._save(mod)
        self._emit("create", mod)
        return mod.record.status()

    async def start(self, name: str) -> ModuleStatus:
        async with self._locked(name) as mod:
            if mod.phase == "running":
                return mod.record.status()
            if mod.phase == "backoff" and mod.supervisor is not None:
                mod.supervisor.cancel()  # start now rather than when the backoff ends
                await asyncio.gather(mod.supervisor, return_exceptions=True)
            await self._start_locked(mod, restarted=False)
            return mod.record.status()

    async def stop(self, name: str, timeout: float = 10.0) -> ModuleStatus:
        async with self._locked(name) as mod:
            await self._stop_locked(mod, timeout)
            return mod.record.status()

    async def restart(self, name: str) -> ModuleStatus:
        async with self._locked(name) as mod:
            await self._stop_locked(mod, self.stop_timeout)
            await self._start_locked(mod, restarted=True)
            return mod.record.status()

    async def remove(self, name: str) -> None:
        async with self._locked(name) as mod:
            await self._stop_locked(mod, self.stop_timeout)
            await self._empty_cgroup(name)
            store = await self._ready()
            store.delete(name)
            del self._modules[name]
            mod.logs.close()
            shutil.rmtree(mod.logs.directory, ignore_errors=True)
            self._emit("destroy", mod)

    async def inspect(self, name: str) -> ModuleStatus:
        await self._ready()
        return self._get(name).record.status()

    async def list(self) -> list[ModuleStatus]:
        await self._ready()
        return [m.record.status() for m in self._modules.values()]

    async def logs(self, name: str, options: LogOptions) -> AsyncIterator[LogChunk]:
        await self._ready()
        mod = self._get(name)
        # Subscribed before the files are read, so nothing written in between is missed; records already read
        # are recognised by their (strictly increasing) timestamps.
        queue = mod.logs.subscribe() if options.follow and mod.phase == "running" else None
        until = options.until * 1_000_000_000 if options.until is not None else None
        since = options.since * 1_000_000_000 if options.since is not None else 0
        try:
            if options.tail is not None:  # read from the files' ends: the time and memory of `tail` records
                records, seen = await asyncio.to_thread(mod.logs.tail, options)
                for record in records:
                    yield record.chunk(options.timestamps)
            else:  # read in batches, the loop running between them: the memory of a batch, whatever the files' size
                seen = 0
                stored = mod.logs.stored(newest_first=False)
                try:
                    while batch := await asyncio.to_thread(take, stored):
                        seen = batch[-1].ts_ns
                        for record in batch:
                            if record.ts_ns >= since and (until is None or record.ts_ns <= until):
                                yield record.chunk(options.timestamps)
                finally:
                    with contextlib.suppress(ValueError):  # still being read by a cancelled batch: closed once done
                        stored.close()
            if queue is None:
                return
            while (new := await queue.get()) is not None:
                if new.ts_ns <= seen or new.ts_ns < since:
                    continue
                if until is not None and new.ts_ns > until:
                    return
                yield new.chunk(options.timestamps)
        finally:
            if queue is not None:
                mod.logs.unsubscribe(queue)

    async def stats(self, name: str) -> Mapping[str, Any]:
        await self._ready()
        mod = self._get(name)
        rec = mod.record
        tree: list[ProcStat] = []
        if mod.phase == "running" and rec.pid is not None:
            root = read_stat(rec.pid)
            if root is not None and root.start_time == rec.pid_start:
                tree = [root, *await asyncio.to_thread(descendants, root)]
        ticks = sum(p.utime + p.stime for p in tree)
        rss = sum(p.rss_pages for p in tree) * PAGE_SIZE
        cpu_ns = ticks * 1_000_000_000 // TICKS_PER_SECOND
        return {"name": name, "engine_id": rec.engine_id, "running": bool(tree), "pids": len(tree),
                "cpu_seconds": ticks / TICKS_PER_SECOND, "rss_bytes": rss,
                # The same numbers where Docker's one-shot stats put them, so consumers read one shape.
                "cpu_stats": {"cpu_usage": {"total_usage": cpu_ns}}, "memory_stats": {"usage": rss},
                "pids_stats": {"current": len(tree)}}

    def running_processes(self) -> dict[tuple[int, int], str]:
        """(pid, start time) of each running module's main process -> its engine id, as it is now: what
        `engine_id_of_pid` walks a caller's ppid chain against, for a caller that must decide without waiting (the
        workload sockets' connection caps, at accept). Empty until the engine has loaded its modules."""
        if self._store is None or self._closed:
            return {}
        return {(m.record.pid, m.record.pid_start): m.record.engine_id for m in self._modules.values()
                if m.phase == "running" and m.record.pid is not None and m.record.pid_start is not None}

    async def engine_id_of_pid(self, pid: int) -> str | None:
        await self._ready()
        return self.place_now(pid)

    def place_now(self, pid: int) -> str | None:
        """The engine id of the running module `pid` belongs to, decided now, without waiting: the one way callers
        are attributed (the workload API's attestation, and the connection caps at accept).

        With module cgroups, by the caller's cgroup: one read, whatever the caller did (a process outside every
        module's cgroup is no module's: only root can move a process out). Without, by its ppid chain up to a
        running module's main process, at most ATTRIBUTION_DEPTH levels (one /proc read each): a deeper caller is
        no module's (fail closed), so no caller can make its attribution cost more than that."""
        running = self.running_processes()
        if not running or pid <= 0:
            return None
        if self._cgroups is not None:
            name = self._cgroups.module_of(cgroup_of(pid))
            mod = self._modules.get(name) if name is not None else None
            if mod is None or mod.phase != "running" or mod.record.pid is None:
                return None
            # Its main process still runs (not exited, not a zombie): what is left in a module's cgroup after that
            # is killed with it, never its caller.
            main = read_stat(mod.record.pid)
            if main is None or main.start_time != mod.record.pid_start or main.state in ("Z", "X", "x"):
                return None
            return mod.record.engine_id
        for st in ancestors(pid, ATTRIBUTION_DEPTH):
            engine_id = running.get((st.pid, st.start_time))
            if engine_id is not None:
                return engine_id
        return None

    async def _empty_cgroup(self, name: str) -> None:
        """Nothing of the module left in its cgroup, and the cgroup gone (it is made again at the next start)."""
        if self._cgroups is None:
            return
        if not await self._cgroups.kill_and_wait(name, self.stop_timeout):
            log.error("module %s: processes in its cgroup did not die", name)
        self._cgroups.remove(name)

    async def _stop_for_shutdown(self, mod: _Module) -> None:
        async with mod.lock:
            try:
                await self._stop_locked(mod, self.stop_timeout, forget=False)
                await self._empty_cgroup(mod.record.name)
            except Exception:  # one module's trouble must not leave the others running
                log.exception("module %s: could not be stopped cleanly", mod.record.name)
            mod.logs.close()

    async def close(self) -> None:
        """Stop every module (they keep their wish to run, for the next daemon) and end every event stream."""
        if self._closed:
            return
        self._closed = True  # from here on, every other call is refused
        if self._store is not None:
            # All at once: one by one, modules that ignore SIGTERM would add up their stop timeouts past any
            # supervisor's patience, and a daemon killed in the middle leaves the rest running.
            await asyncio.gather(*(self._stop_for_shutdown(mod) for mod in list(self._modules.values())))
            if self._cgroups is not None:
                self._cgroups.remove_base()
        for queue in self._subscribers:
            queue.put_nowait(None)
        self._subscribers.clear()
