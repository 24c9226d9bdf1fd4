"""Who a host-process module may run as: `allow_elevated_docker_permissions` gates root host modules as it gates
privileged containers, and no module runs as a keys/certs/identity principal's uid. The runtime as the daemon
composes it (config -> settings -> `make_engine`), its management API, real processes."""

from __future__ import annotations

import logging
import os
import shutil
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edgeward.config.problems import ConfigError, Problems
from edgeward.daemon import load_settings
from edgeward.http.errors import HttpError
from edgeward.runtime.compose import make_engine
from edgeward.runtime.engine import EngineError, ModuleSpec
from edgeward.runtime.engines.process import ProcessEngine
from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.runtime.settings import parse_runtime_settings
from tests.fixtures.modules import logs_until
from tests.fixtures.runtime import RuntimeEnv, runtime_settings, serve_runtime

pytestmark = [pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.skipif(os.geteuid() != 0, reason="switching a module's user needs a daemon running as root")]

# Prints the identity the module's process really has: real uid and gid, effective and permitted capabilities.
SHOW_ID = ("st = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines() if ':' in l)\n"
           "print('ID', st['Uid'].split()[0], st['Gid'].split()[0], int(st['CapEff'], 16), int(st['CapPrm'], 16), "
           "st['NoNewPrivs'].strip(), 'END', flush=True)\nimport time\ntime.sleep(60)")
PRINCIPAL_UID = 4242
SYSTEM_PYTHON = "/usr/bin/python3"  # what another uid can run (the venv may live in a directory it cannot pass)
ROOT_SPECS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("rootmod", {}), ("rootmod0", {"User": "0"}), ("rootname", {"User": "root"}),
    ("rootgroup", {"User": "nobody:root"}), ("rootuid", {"User": "0:65534"}))


def _spec(name: str, image: str = sys.executable, **options: Any) -> dict[str, Any]:
    return {"name": name, "type": "docker", "imagePullPolicy": "never",
            "config": {"settings": {"image": image, "createOptions": {"Cmd": ["-c", SHOW_ID], **options}},
                       "env": []}}


async def _identity(mgmt: ManagementClient, name: str) -> list[int]:
    """uid, gid, CapEff, CapPrm, NoNewPrivs of the running module's process."""
    seen = await logs_until(mgmt, name, b" END")
    return [int(x) for x in seen.split(b"ID ", 1)[1].split(b" END", 1)[0].split()]


async def _runtime(request: pytest.FixtureRequest, base: Path, doc: dict[str, Any]) -> AsyncIterator[RuntimeEnv]:
    async with serve_runtime(request, base, make_engine(runtime_settings(base, doc)), doc) as env:
        yield env


@pytest.fixture
async def composed(request: pytest.FixtureRequest, public_dir: Path) -> AsyncIterator[RuntimeEnv]:
    """The config defaults (elevated permissions off) and one principal, as `config apply` hands it to the
    runtime."""
    doc = {"hostname": "edge1", "edgeward": {"peers": {"principal_uids": [PRINCIPAL_UID]}}}
    async for env in _runtime(request, public_dir, doc):
        yield env


@pytest.fixture
async def elevated(request: pytest.FixtureRequest, public_dir: Path) -> AsyncIterator[RuntimeEnv]:
    async for env in _runtime(request, public_dir, {"hostname": "edge1", "allow_elevated_docker_permissions": True}):
        yield env


@pytest.fixture
async def mgmt_of(composed: RuntimeEnv) -> AsyncIterator[ManagementClient]:
    client = ManagementClient(composed.mgmt_socket)
    yield client
    await client.close()


async def _refused(mgmt: ManagementClient, spec: dict[str, Any]) -> HttpError:
    with pytest.raises(HttpError) as refused:
        await mgmt.create_module(spec)
    return refused.value


async def test_an_agent_gets_no_root_host_module_while_elevated_permissions_are_off(
        mgmt_of: ManagementClient, caplog: pytest.LogCaptureFixture) -> None:
    """brk11 a12: with the default allow_elevated_docker_permissions = false, a deployment (an unprivileged edge
    agent) created host modules without User, or with User "0", that ran as uid 0 and read the master key. Now each
    is refused with Edgeward's status for elevated create options (422), naming the setting; nothing is created."""
    for name, options in (*ROOT_SPECS, ("rootsandbox", {"User": "0", "Sandbox": True})):
        refused = await _refused(mgmt_of, _spec(name, **options))
        assert refused.status == 422, (name, refused.status, refused.message)
        assert "allow_elevated_docker_permissions" in refused.message, name
    assert await mgmt_of.list_modules() == []
    # An unprivileged User is what a deployment gets: no root uid or gid, no capability.
    await mgmt_of.create_module(_spec("asnobody", image=SYSTEM_PYTHON, User="nobody"))
    await mgmt_of.action("asnobody", "start")
    uid, gid, cap_eff, cap_prm, no_new_privs = await _identity(mgmt_of, "asnobody")
    assert uid != 0 and gid != 0 and cap_eff == cap_prm == 0
    # and no setuid program or file capability it execs gives any back (second review: a module could exec them)
    assert no_new_privs == 1


async def test_an_update_to_a_root_host_module_is_refused(mgmt_of: ManagementClient) -> None:
    await mgmt_of.create_module(_spec("sensor", image=SYSTEM_PYTHON, User="nobody"))
    with pytest.raises(HttpError) as refused:
        await mgmt_of.update_module("sensor", _spec("sensor", User="0"), start=True)
    assert refused.value.status == 422 and "allow_elevated_docker_permissions" in refused.value.message
    # ...and the refused update cost nothing: the module it would have replaced is still there, as it was
    # (found by the fixer: the process engine's refusal came after the old module was removed)
    assert [m["name"] for m in await mgmt_of.list_modules()] == ["sensor"]
    for bad in (_spec("sensor", image="/nonexistent/binary", User="nobody"), _spec("sensor", User="nobody:root")):
        with pytest.raises(HttpError):
            await mgmt_of.update_module("sensor", bad, start=True)
        assert [m["name"] for m in await mgmt_of.list_modules()] == ["sensor"]
    await mgmt_of.action("sensor", "start")
    assert (await _identity(mgmt_of, "sensor"))[0] != 0


async def test_a_setuid_root_or_file_capability_executable_is_refused_while_elevated_permissions_are_off(
        mgmt_of: ManagementClient, public_dir: Path) -> None:
    """User drops root, but an executable that is setuid root, setgid root or carries file capabilities gets it
    (or them) back at exec."""
    for name, mode, caps in (("suid", 0o4755, False), ("sgid", 0o2755, False), ("fcaps", 0o755, True)):
        image = public_dir / f"{name}-python"
        shutil.copy2(os.path.realpath(sys.executable), image)
        os.chown(image, 0, 0)
        os.chmod(image, mode)
        if caps:  # VFS_CAP_REVISION_2, effective; permitted CAP_NET_RAW (13)
            os.setxattr(image, "security.capability", struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0))
        refused = await _refused(mgmt_of, _spec(name, image=str(image), User="nobody"))
        assert refused.status == 422 and "allow_elevated_docker_permissions" in refused.message, name


async def test_elevated_permissions_on_still_run_a_root_host_module_and_say_so(
        elevated: RuntimeEnv, caplog: pytest.LogCaptureFixture) -> None:
    mgmt = ManagementClient(elevated.mgmt_socket)
    try:
        with caplog.at_level(logging.WARNING, "edgeward.runtime.engines.process"):
            for name, options in (("rootmod", {}), ("rootmod0", {"User": "0"})):
                await mgmt.create_module(_spec(name, **options))
                await mgmt.action(name, "start")
                uid, gid, cap_eff, _, _ = await _identity(mgmt, name)
                assert (uid, gid) == (0, 0) and cap_eff != 0
        warned = [r.getMessage() for r in caplog.records if "root" in r.getMessage()]
        assert any("rootmod " in m for m in warned) and any("rootmod0 " in m for m in warned), warned
    finally:
        await mgmt.close()


async def test_a_root_module_created_while_elevated_permissions_were_on_does_not_start_once_they_are_off(
        public_dir: Path) -> None:
    state = public_dir / "engine"
    spec = ModuleSpec(name="rootmod", image=sys.executable, env={}, create_options={"Cmd": ["-c", SHOW_ID]},
                      restart_policy="always")
    before = ProcessEngine(state, stop_timeout=2.0, allow_elevated=True)
    await before.create(spec)
    await before.start("rootmod")
    await before.close()  # keeps its wish to run
    after = ProcessEngine(state, stop_timeout=2.0, allow_elevated=False)
    try:
        assert (await after.inspect("rootmod")).state == "dead"  # not started again by the new engine
        with pytest.raises(EngineError) as refused:
            await after.start("rootmod")
        assert refused.value.status == 422 and "allow_elevated_docker_permissions" in refused.value.message
    finally:
        await after.close()


async def test_a_module_never_runs_as_a_principals_uid(mgmt_of: ManagementClient) -> None:
    """brk11 a13: a module deployed as a [[principal]]'s uid got 401 itself, but a double-forked orphan (out of the
    module's process tree) was taken for the principal and loaded its key. Refused like a service account."""
    for user in (str(PRINCIPAL_UID) + ":65534", f"{PRINCIPAL_UID}:{PRINCIPAL_UID}"):
        refused = await _refused(mgmt_of, _spec("asprin", User=user))
        assert refused.status == 400 and "principal" in refused.message, refused.message
    assert await mgmt_of.list_modules() == []


async def test_the_principals_of_the_config_reach_the_process_engine(tmp_path: Path) -> None:
    """What the daemon and `config apply` do with [[principal]]: every principal's uid (keys, certs, identity)
    lands in the runtime's settings and its engine."""
    config = tmp_path / "config.toml"
    config.write_text('hostname = "edge1"\n'
                      '[[principal]]\nuid = 1000\nkeys = ["dev1-*"]\n'
                      '[[principal]]\nuid = 1001\ncerts = ["dev2-*"]\n'
                      '[[principal]]\nuid = 1002\nname = "agent"\nidtype = ["module"]\n')
    settings = load_settings(config, tmp_path / "state", tmp_path / "run").runtime
    assert sorted(settings.principal_uids) == [1000, 1001, 1002]
    assert not settings.allow_elevated_docker_permissions
    engine = make_engine(settings)
    assert isinstance(engine, ProcessEngine)
    assert engine.principal_uids == frozenset({1000, 1001, 1002}) and engine.allow_elevated is False
    wrong = Problems("edged.toml")
    parse_runtime_settings({"edgeward": {"peers": {"principal_uids": [1000, "alice", -1]}}}, tmp_path, tmp_path,
                           wrong)
    with pytest.raises(ConfigError, match="principal_uids"):
        wrong.raise_if_any()


async def test_users_no_account_can_have_are_400s_not_500s(mgmt_of: ManagementClient) -> None:
    """Found by the session-11 second review: "²" passed str.isdigit() and failed int(), 5,000 digits failed int(),
    and a NUL made getpwnam raise ValueError: each was a 500 with a traceback."""
    for user in ("²", "9" * 5000, "root\x00", "nobody:\x00", "\u0661\u0662"):
        refused = await _refused(mgmt_of, _spec("odd", image=SYSTEM_PYTHON, User=user))
        assert refused.status == 400, (user, refused.status, refused.message)
    assert await mgmt_of.list_modules() == []


async def test_a_create_the_engine_fails_unexpectedly_leaves_no_ghost(composed: RuntimeEnv, mgmt_of: ManagementClient,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the session-11 second review: a create that ended in a 500 stayed registered, with its workload
    directory and a listening socket (200 such creates: 200 more open files until a restart). A failed create is
    undone whatever the failure."""
    engine = composed.parts.engine

    async def broken(*_: Any) -> Any:
        raise RuntimeError("an engine bug")

    monkeypatch.setattr(engine, "create", broken)
    with pytest.raises(HttpError) as failed:
        await mgmt_of.create_module(_spec("ghost", image=SYSTEM_PYTHON, User="nobody"))
    assert failed.value.status == 500
    assert await mgmt_of.list_modules() == [] and composed.parts.registry.get("ghost") is None
    assert not composed.parts.sockets.socket_path("ghost").exists()


async def test_a_script_of_a_setuid_interpreter_and_a_privileged_group_are_refused(
        mgmt_of: ManagementClient, public_dir: Path) -> None:
    """Found by the session-11 second review: a script whose #! interpreter is setuid root ran with euid 0 (the
    check read only the script's own mode), and `User: "65534:shadow"` read /etc/shadow (as disk, docker, sudo, adm
    would give their own)."""
    interpreter = public_dir / "suid-python"
    shutil.copy2(os.path.realpath(sys.executable), interpreter)
    os.chown(interpreter, 0, 0)
    os.chmod(interpreter, 0o4755)
    script = public_dir / "module.py"
    script.write_text(f"#!{interpreter}\nimport os, time\nprint(os.geteuid())\ntime.sleep(60)\n")
    os.chmod(script, 0o755)
    refused = await _refused(mgmt_of, _spec("viascript", image=str(script), User="nobody"))
    assert refused.status == 422 and str(interpreter) in refused.message, refused.message
    refused = await _refused(mgmt_of, _spec("shadowy", image=SYSTEM_PYTHON, User="65534:shadow"))
    assert refused.status == 422 and "shadow" in refused.message, refused.message
    assert await mgmt_of.list_modules() == []


async def test_an_image_under_proc_sys_or_dev_is_refused(mgmt_of: ManagementClient) -> None:
    """Found by the session-11 review: image /proc/self/exe was created (201). It names whatever program is asking,
    not a program of its own: nothing a module could be measured as."""
    for image in ("/proc/self/exe", "/proc/1/exe", "/dev/zero", "/sys/kernel/notes", "/proc/../proc/self/exe"):
        refused = await _refused(mgmt_of, _spec("odd", image=image, User="nobody"))
        assert refused.status == 400, (image, refused.status, refused.message)
    assert await mgmt_of.list_modules() == []
