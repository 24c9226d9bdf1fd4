"""One cgroup per host-process module, against the real kernel: a process that left the module's process group and
tree (setsid, then a fork: reparented to init) dies with the module, whether the module is stopped, removed or
exits on its own, and one a dead daemon left behind dies when the next daemon loads; no code of the module runs
outside its cgroup; a module that cannot be put in its cgroup does not run at all."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeward.runtime.engine import EngineError
from edgeward.runtime.engines.proccgroup import ModuleCgroups, cgroup2_mount, own_cgroup
from edgeward.runtime.engines.process import ProcessEngine
from edgeward.runtime.engines.procfs import ProcStat, read_stat
from tests.integration import test_process_engine
from tests.integration.test_process_engine import TIMEOUT, alive, make_engine, sh, wait_gone, wait_line

engine = test_process_engine.engine  # the fixture: an engine that runs modules as root, closed by pid after the test

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or cgroup2_mount() is None,
                                reason="making cgroups needs root and a cgroup v2 hierarchy")


@pytest.fixture
def escapees() -> Iterator[list[ProcStat]]:
    """Processes that left a module's tree; killed by pid (and start time) whatever the test's outcome."""
    found: list[ProcStat] = []
    yield found
    for st in found:
        if alive(st):
            with contextlib.suppress(ProcessLookupError):
                os.kill(st.pid, signal.SIGKILL)


ESCAPE = "setsid -f sh -c 'echo $$ > {pidfile}; exec sleep 300'; echo ready; "


async def escapee(pidfile: Path, found: list[ProcStat]) -> ProcStat:
    """The process a module double-forked out of its tree, once it has written its pid."""
    deadline = time.monotonic() + TIMEOUT
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline, "the module's escapee never wrote its pid"
        await asyncio.sleep(0.01)
    st = read_stat(int(pidfile.read_text()))
    assert st is not None
    found.append(st)
    assert st.ppid != 0 and st.session == st.pid  # a session of its own, reparented away from the module
    return st


@pytest.mark.parametrize("how", ["stop", "remove", "exits"])
async def test_a_process_that_left_the_tree_dies_with_the_module(engine: ProcessEngine, tmp_path: Path,
                                                                   escapees: list[ProcStat], how: str) -> None:
    pidfile = tmp_path / "escapee.pid"
    main = "exec sleep 300" if how != "exits" else "read -r _ < {fifo}".format(fifo=tmp_path / "fifo")
    os.mkfifo(tmp_path / "fifo")
    await engine.create(sh("leaver", ESCAPE.format(pidfile=pidfile) + main))
    await engine.start("leaver")
    await wait_line(engine, "leaver", b"ready")
    st = await escapee(pidfile, escapees)
    assert alive(st)
    if how == "stop":
        await engine.stop("leaver", timeout=1.0)
    elif how == "remove":
        await engine.remove("leaver")
    else:
        with (tmp_path / "fifo").open("w") as fifo:  # the main process reads one line, then exits 0
            fifo.write("\n")
        async with asyncio.timeout(TIMEOUT):
            while (await engine.inspect("leaver")).state == "running":
                await asyncio.sleep(0.01)
    await wait_gone(st)
    assert not alive(st)


async def test_no_code_of_the_module_runs_outside_its_cgroup(engine: ProcessEngine, tmp_path: Path) -> None:
    await engine.create(sh("where", "cat /proc/self/cgroup; echo ready; exec sleep 300"))
    await engine.start("where")
    chunks = await wait_line(engine, "where", b"ready")
    seen = b"".join(c.data for c in chunks).decode()
    own = own_cgroup()
    assert own is not None
    assert any(line.startswith("0::") and line.endswith("/where") and line[3:].startswith(own.rstrip("/"))
               for line in seen.splitlines()), seen
    cgroups = ModuleCgroups.for_state(tmp_path / "state")
    assert cgroups is not None and cgroups.populated("where")


async def test_what_a_dead_daemon_left_in_a_cgroup_is_killed_by_the_next(tmp_path: Path,
                                                                         escapees: list[ProcStat]) -> None:
    state = tmp_path / "state"
    cgroups = ModuleCgroups.for_state(state)
    assert cgroups is not None
    left = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        st = read_stat(left.pid)
        assert st is not None
        escapees.append(st)
        cgroups.enter("gone-module", left.pid)  # a module's process, as a daemon that died would have left it
        eng = make_engine(state)
        try:
            assert await eng.list() == []  # loading settles what the last daemon left
            assert await asyncio.to_thread(left.wait, TIMEOUT) == -signal.SIGKILL
            assert "gone-module" not in cgroups.names()  # no such module any more: its cgroup is removed
        finally:
            await eng.close()
    finally:
        if left.poll() is None:
            left.kill()
        left.wait()


async def test_a_module_that_cannot_enter_its_cgroup_never_runs(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # A directory that is no cgroup: the kernel file the engine writes the pid to does not exist there.
    not_a_cgroup = tmp_path / "not-a-cgroup"
    not_a_cgroup.mkdir()
    monkeypatch.setattr(ModuleCgroups, "for_state", classmethod(lambda cls, state: cls(not_a_cgroup)))
    marker = tmp_path / "ran"
    eng = make_engine(tmp_path / "state")
    try:
        await eng.create(sh("outside", f"touch {marker}; exec sleep 300"))
        with pytest.raises(EngineError) as refused:
            await eng.start("outside")
        assert refused.value.status == 500 and "cgroup" in refused.value.message
        assert (await eng.inspect("outside")).state != "running"
    finally:
        await eng.close()
    assert not marker.exists()


async def test_without_cgroups_the_engine_still_runs_modules(tmp_path: Path) -> None:
    eng = ProcessEngine(tmp_path / "state", stop_timeout=2.0, allow_elevated=True, cgroups=False)
    try:
        await eng.create(sh("plain", "cat /proc/self/cgroup; echo ready; exec sleep 300"))
        await eng.start("plain")
        chunks = await wait_line(eng, "plain", b"ready")
        assert not any(b"edgeward-modules-" in c.data for c in chunks)
    finally:
        await eng.close()
