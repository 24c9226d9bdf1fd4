"""A host module's uid is its own (session-13 review, brk13b): two modules of one uid can take each other's open
connections (pidfd_getfd, ptrace: the same uid is all it takes), and the workload and management APIs attest a
connection once, by the peer credentials of the process that opened it. So the engine refuses a `User` whose uid
another module of the engine uses (running or not), at create, at start and for modules restored at the daemon's
start; the sandbox's uid range is the engine's to allocate. Also: the groups that own key material (SoftHSM2's
token store, certificates' private keys) are refused like the other privileged groups (brk13b softhsm), and a
state record from an earlier boot never names a process to kill (brk13b stale_pid_record_after_reboot)."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeward.http.errors import HttpError
from edgeward.runtime.engine import EngineError, ModuleSpec
from edgeward.runtime.engines.process import ProcessEngine
from edgeward.runtime.engines.procfs import read_stat
from edgeward.runtime.engines.procstate import ModuleRecord, RecordStore
from edgeward.runtime.mgmt_client import ManagementClient
from tests.fixtures.runtime import serve_runtime

pytestmark = [pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.skipif(os.geteuid() != 0, reason="switching a module's user needs root")]

SLEEP = "/usr/bin/sleep"
UID_A, UID_B = 4301, 4302  # no passwd entries: "uid:gid" names them


def _engine(state: Path, **kw: Any) -> ProcessEngine:
    """The config default: elevated permissions off."""
    return ProcessEngine(state, stop_timeout=2.0, backoff_base=0.05, backoff_cap=0.2, **kw)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[ProcessEngine]:
    eng = _engine(tmp_path / "state", sandbox_uid_base=3_000_000, sandbox_uid_count=16)
    try:
        yield eng
    finally:
        await eng.close()


def _spec(name: str, user: str | None, **options: Any) -> ModuleSpec:
    opts: dict[str, Any] = {"Cmd": ["60"], **options}
    if user is not None:
        opts["User"] = user
    return ModuleSpec(name=name, image=SLEEP, create_options=opts)


async def _refused(call: Any) -> EngineError:
    with pytest.raises(EngineError) as refused:
        await call
    return refused.value


async def test_a_second_module_with_the_same_user_is_refused(engine: ProcessEngine) -> None:
    """brk13b fd_theft_same_user: two host modules with one unprivileged User; the thief copied the victim's
    workload connection out of its process and signed as the victim."""
    await engine.create(_spec("victim", f"{UID_A}:{UID_A}"))  # created, never started: its uid is still its own
    refused = await _refused(engine.create(_spec("thief", f"{UID_A}:{UID_A}")))
    assert refused.status == 409 and "victim" in refused.message and str(UID_A) in refused.message, refused
    assert (await _refused(engine.check(_spec("thief", f"{UID_A}:{UID_A}")))).status == 409
    # with another group it is not even its own user's (brk14b foreign_gid: a module's gid is its uid's own)
    assert (await _refused(engine.create(_spec("thief", f"{UID_A}:{UID_B}")))).status == 400
    assert [m.name for m in await engine.list()] == ["victim"]
    await engine.check(_spec("victim", f"{UID_A}:{UID_A}", Cmd=["30"]))  # its own update keeps its uid
    await engine.create(_spec("other", f"{UID_B}:{UID_B}"))  # a uid of its own: fine
    await engine.start("other")
    # a sandboxed module with that User shares it too (brk13b --sandboxed-victim)
    assert (await _refused(engine.create(_spec("boxed", f"{UID_B}:{UID_B}", Sandbox=True)))).status == 409


async def test_the_sandbox_uid_range_is_the_engines_to_allocate(engine: ProcessEngine) -> None:
    """A User inside the range sandboxed modules get their uids from would share (or inherit the files of) a
    sandboxed module's uid."""
    await engine.create(_spec("boxed", None, Sandbox=True))
    for user in ("3000000:3000000", "3000015:3000015"):
        refused = await _refused(engine.create(_spec("squatter", user)))
        assert refused.status == 400 and "sandbox" in refused.message, refused
    await engine.create(_spec("outside", "3000016:3000016"))


async def test_modules_restored_at_the_daemons_start_that_share_a_uid_are_not_started(tmp_path: Path) -> None:
    """Records written before this rule (or by hand) that give two modules one uid: neither is started."""
    state = tmp_path / "state"
    store = RecordStore(state)
    for name in ("first", "second"):
        store.save(ModuleRecord(name=name, engine_id=f"proc-{name}-1", image=SLEEP, image_id="sha256:" + "0" * 64,
                                create_options={"Cmd": ["60"], "User": f"{UID_A}:{UID_A}"}, state="stopped",
                                want_running=True, restart_policy="always"))
    eng = _engine(state)
    try:
        for name in ("first", "second"):
            status = await eng.inspect(name)
            assert (status.state, status.pid) == ("dead", None), status
            refused = await _refused(eng.start(name))
            assert refused.status == 409, refused
    finally:
        await eng.close()


async def test_a_module_with_the_edge_agents_user_is_refused(request: pytest.FixtureRequest,
                                                             public_dir: Path) -> None:
    """brk13b agent_takeover_same_user: a module sharing the agent's User took the agent's mgmt.sock connection
    and created and started a module of its own."""
    agent = {"image": SLEEP, "createOptions": {"Cmd": ["60"], "User": f"{UID_B}:{UID_B}"}}
    doc = {"hostname": "edge1", "agent": {"name": "edgeAgent", "type": "docker", "config": agent}}
    async with serve_runtime(request, public_dir, _engine(public_dir / "engine"), doc) as rt:
        mgmt = ManagementClient(rt.mgmt_socket)
        try:
            assert (await rt.parts.engine.inspect("edgeAgent")).state == "running"
            spec = {"name": "thief", "type": "docker", "imagePullPolicy": "never",
                    "config": {"settings": {"image": SLEEP, "createOptions": {"Cmd": ["60"], "User": str(UID_B) +
                                                                              f":{UID_B}"}}, "env": []}}
            with pytest.raises(HttpError) as refused:
                await mgmt.create_module(spec)
            assert refused.value.status == 409 and "edgeAgent" in refused.value.message, refused.value.message
            assert [m["name"] for m in await mgmt.list_modules()] == ["edgeAgent"]
        finally:
            await mgmt.close()


def _groups(*names: str) -> list[str]:
    out = []
    for name in names:
        with contextlib.suppress(KeyError):
            grp.getgrnam(name)
            out.append(name)
    return out


@pytest.mark.parametrize("group", _groups("softhsm", "ssl-cert") or ["<none here>"])
async def test_a_group_that_owns_key_material_is_refused(engine: ProcessEngine, group: str) -> None:
    """brk13b softhsm_group_module: User "65534:softhsm" could write SoftHSM2's token store."""
    if group == "<none here>":
        pytest.skip("no key-material group on this system")
    refused = await _refused(engine.create(_spec("hsm", f"{UID_A}:{group}")))
    assert refused.status == 422 and group in refused.message, refused
    assert await engine.list() == []


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process of "the new boot": another user's service, in its own group, with a child."""
    proc = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c",
                             "sleep 300 & wait"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("boot_id", [None, "00000000-0000-0000-0000-000000000000"])
async def test_a_record_from_another_boot_names_no_process(tmp_path: Path, bystander: subprocess.Popen[bytes],
                                                           boot_id: str | None) -> None:
    """brk13b stale_pid_record_after_reboot: last boot's (pid, start time) named an unrelated process of this boot,
    and the daemon SIGTERMed, then SIGKILLed its group and tree. A record without a boot id (written before boot ids
    were recorded) is from an unknown boot: never signalled either."""
    await asyncio.sleep(0.3)
    st = read_stat(bystander.pid)
    assert st is not None
    record = ModuleRecord(name="mod", engine_id="proc-mod-1", image=SLEEP, image_id="sha256:" + "0" * 64,
                          create_options={"Cmd": ["60"], "User": f"{UID_A}:{UID_A}"}, state="running",
                          pid=bystander.pid, pid_start=st.start_time, want_running=True, boot_id=boot_id)
    RecordStore(tmp_path / "state").save(record)
    eng = _engine(tmp_path / "state")
    try:
        status = await eng.inspect("mod")
        assert status.state == "dead" and status.pid is None
        await asyncio.sleep(0.5)
        assert bystander.poll() is None
    finally:
        await eng.close()
    assert bystander.poll() is None

