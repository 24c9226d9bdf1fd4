"""`allow_elevated_docker_permissions` over a real dockerd, through the management API as the edge agent uses it.

With the setting false (Edgeward's default), a deployment cannot give a module privileged mode or added
capabilities (stripped, as IoT Edge 1.5 strips them), nor host namespaces, widened device access, unconfined
security profiles or binds of host control surfaces (refused with a 422 naming the option and the setting)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import edgeward
from edgeward.cli.check import check
from edgeward.http.errors import HttpError
from edgeward.runtime.engines.moby import DockerEngine
from edgeward.runtime.mgmt_client import ManagementClient
from tests.fixtures.dockerd import TEST_IMAGE, Dockerd, host_python_binds
from tests.fixtures.modules import CLIENT_SCRIPT, logs_until, module_results
from tests.fixtures.runtime import RuntimeEnv, serve_runtime

pytestmark = pytest.mark.asyncio(loop_scope="session")
CAP_SYS_ADMIN = 21
# Prints the effective capabilities of the container's init process, then stays up.
SHOW_CAPS = ["sh", "-c", "cat /proc/1/status; echo CAPS-DONE; sleep 3600"]


def spec(name: str, create_options: dict[str, Any], cmd: list[str] | None = None) -> dict[str, Any]:
    options = {"Cmd": cmd or ["sleep", "3600"], **create_options}
    return {"name": name, "type": "docker", "imagePullPolicy": "never",
            "config": {"settings": {"image": TEST_IMAGE, "createOptions": options}, "env": []}}


def _doc(dockerd: Dockerd, allow: bool | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"hostname": "edge-elevated", "moby_runtime": {"uri": dockerd.uri, "network": "none"},
                           "edgeward": {"runtime": {"engine": "docker", "watchdog_seconds": 1}}}
    if allow is not None:
        doc["allow_elevated_docker_permissions"] = allow
    return doc


async def _serve(request: pytest.FixtureRequest, base: Path, dockerd: Dockerd,
                 allow: bool | None) -> AsyncIterator[tuple[RuntimeEnv, ManagementClient]]:
    async with serve_runtime(request, base, DockerEngine(dockerd.uri), _doc(dockerd, allow)) as env:
        client = ManagementClient(env.mgmt_socket)
        try:
            yield env, client
        finally:
            await client.close()
            for m in await env.parts.engine.list():
                await env.parts.engine.remove(m.name)


@pytest.fixture
async def strict(request: pytest.FixtureRequest, public_dir: Path,
                 dockerd: Dockerd) -> AsyncIterator[tuple[RuntimeEnv, ManagementClient]]:
    """The default: the config does not name the setting."""
    async for pair in _serve(request, public_dir, dockerd, None):
        yield pair


@pytest.fixture
async def elevated(request: pytest.FixtureRequest, public_dir: Path,
                   dockerd: Dockerd) -> AsyncIterator[tuple[RuntimeEnv, ManagementClient]]:
    async for pair in _serve(request, public_dir, dockerd, True):
        yield pair


def _inspect(dockerd: Dockerd, name: str) -> dict[str, Any]:
    return dict(json.loads(dockerd.cli("inspect", name).stdout)[0])


def _cap_eff(status: bytes) -> int:
    m = re.search(rb"^CapEff:\s*([0-9a-f]+)$", status, re.M)
    assert m is not None, status[-500:]
    return int(m.group(1), 16)


@pytest.mark.parametrize(("key", "host", "stripped"), [
    ("HostConfig", {"Privileged": True, "CapAdd": ["SYS_ADMIN"]}, {"HostConfig.Privileged", "HostConfig.CapAdd"}),
    ("HostConfig", {"CapAdd": ["CAP_SYS_ADMIN"]}, {"HostConfig.CapAdd"}),
    # Docker reads JSON keys case-insensitively, so a lower-case spelling must not slip past the rules.
    ("hostconfig", {"privileged": True, "capadd": ["SYS_ADMIN"]}, {"HostConfig.Privileged", "HostConfig.CapAdd"}),
], ids=["privileged", "cap-add", "lower-case"])
async def test_privileged_and_cap_sys_admin_are_stripped_when_elevated_permissions_are_off(
        strict: tuple[RuntimeEnv, ManagementClient], dockerd: Dockerd, key: str, host: dict[str, Any],
        stripped: set[str]) -> None:
    rt, mgmt = strict
    await mgmt.create_module(spec("escapee", {key: {**host, "NetworkMode": "none"}}, SHOW_CAPS))
    await mgmt.action("escapee", "start")
    status = await logs_until(mgmt, "escapee", b"CAPS-DONE")
    assert not _cap_eff(status) & (1 << CAP_SYS_ADMIN), "the module's init process holds CAP_SYS_ADMIN"
    hc = _inspect(dockerd, "escapee")["HostConfig"]
    assert hc["Privileged"] is False and not hc.get("CapAdd"), hc
    assert {"CHOWN", "SETUID"} <= set(hc.get("CapDrop") or []), hc  # as IoT Edge 1.5 drops them
    records = [r for r in rt.parts.audit.records() if r.kind == "module.privileges_stripped"]
    assert records and records[-1].module == "escapee"
    assert set(records[-1].detail["stripped"]) == stripped


def _refused_options(rt: RuntimeEnv, dockerd: Dockerd, victim_dir: Path, link: Path) -> dict[str, dict[str, Any]]:
    state, run = rt.base / "state", rt.settings.run_dir

    def bind(source: str | Path) -> dict[str, Any]:
        return {"HostConfig": {"Mounts": [{"Type": "bind", "Source": str(source), "Target": "/host"}]}}

    def binds(source: str | Path) -> dict[str, Any]:
        return {"HostConfig": {"Binds": [f"{source}:/host:ro"]}}

    return {
        "bind /proc": bind("/proc"),
        "bind /sys/fs/cgroup": binds("/sys/fs/cgroup"),
        "bind /sys via //sys/": bind("//sys/"),
        "bind the engine's socket": bind(dockerd.socket),
        "bind /var/run/docker.sock": binds("/var/run/docker.sock"),
        "bind /run/docker.sock": bind("/run/docker.sock"),
        "bind the state dir": binds(state),
        "bind the state dir's keys, with ..": bind(f"{run}/../state/keys/"),
        "bind the run dir through a symlink": bind(link),
        "bind another module's socket dir": binds(victim_dir),
        "bind a parent of the state dir": bind(rt.base.parent),
        "bind /": binds("/"),
        "bind /run": bind("/run"),
        "volume that binds /": {"HostConfig": {"Mounts": [{
            "Type": "volume", "Source": "evil", "Target": "/host", "VolumeOptions": {
                "DriverConfig": {"Name": "local", "Options": {"type": "none", "o": "bind", "device": "/"}}}}]}},
        "VolumesFrom another module": {"HostConfig": {"VolumesFrom": ["victim"]}},
        "PidMode host": {"HostConfig": {"PidMode": "host"}},
        "PidMode of another module": {"HostConfig": {"PidMode": "container:victim"}},
        "IpcMode host": {"HostConfig": {"IpcMode": "host"}},
        "UsernsMode host": {"HostConfig": {"UsernsMode": "host"}},
        "apparmor unconfined": {"HostConfig": {"SecurityOpt": ["apparmor=unconfined"]}},
        "seccomp unconfined": {"HostConfig": {"SecurityOpt": ["seccomp:unconfined"]}},
        "systempaths unconfined": {"HostConfig": {"SecurityOpt": ["systempaths=unconfined"]}},
        "no masked paths": {"HostConfig": {"MaskedPaths": []}},
        "writable /proc/sys": {"HostConfig": {"ReadonlyPaths": []}},
        "/dev/mem": {"HostConfig": {"Devices": [{"PathOnHost": "/dev/mem", "PathInContainer": "/dev/mem",
                                                 "CgroupPermissions": "rwm"}]}},
        "every device": {"HostConfig": {"DeviceCgroupRules": ["a *:* rwm"]}},
        "every block device": {"HostConfig": {"DeviceCgroupRules": ["b 8:* rwm"]}},
        "cgroup parent of another container": {"HostConfig": {"CgroupParent": f"/docker/{'a' * 64}"}},
        "ambiguous key spelling": {"HostConfig": {"PidMode": "", "pidmode": "host"}},
        # the engine's real paths, wherever it was told to keep them (this dockerd runs with its own
        # --data-root and --exec-root): other modules' layers, containerd's socket
        "bind the engine's data root": binds(dockerd.root / "data"),
        "bind the engine's overlay2 layers": bind(dockerd.root / "data" / "overlay2"),
        "bind the engine's exec root": bind(dockerd.root / "exec"),
        "bind the engine's containerd socket dir": binds(dockerd.root / "exec" / "containerd"),
        "bind the engine's pid file": binds(dockerd.root / "dockerd.pid"),
        # host services that run as root take commands over these sockets, read-only bind or not
        "bind /run/systemd": binds("/run/systemd"),
        "bind /run/dbus": bind("/run/dbus"),
        "bind /var/run/dbus": binds("/var/run/dbus"),
        "bind /run/udev": binds("/run/udev"),
        "bind /var/log writable": {"HostConfig": {"Binds": ["/var/log:/host"]}},
        "NetworkMode of another module": {"HostConfig": {"NetworkMode": "container:victim"}},
        "NetworkMode of another module, upper case": {"HostConfig": {"NetworkMode": "CONTAINER:victim"}},
    }


async def test_host_control_surfaces_are_refused_when_elevated_permissions_are_off(
        strict: tuple[RuntimeEnv, ManagementClient], dockerd: Dockerd) -> None:
    rt, mgmt = strict
    await mgmt.create_module(spec("victim", {"HostConfig": {"NetworkMode": "none"}}))
    link = rt.base / "innocent-looking"
    link.symlink_to(rt.settings.run_dir)
    cases = _refused_options(rt, dockerd, rt.settings.workload_root / "victim", link)
    accepted, answers = [], {}
    for i, (what, options) in enumerate(cases.items()):
        name = f"attacker{i}"
        try:
            await mgmt.create_module(spec(name, options))
            accepted.append(what)
        except HttpError as e:
            answers[what] = (e.status, e.message)
            # nothing of the refused module is left behind: no registration, no container, no socket dir
            assert rt.parts.registry.get(name) is None
            assert not (rt.settings.workload_root / name).exists()
            assert dockerd.cli("inspect", name, check=False).returncode != 0
    assert not accepted, f"created although elevated permissions are off: {accepted}"
    for what, (status, message) in answers.items():
        assert status == 422, (what, status, message)
        assert "allow_elevated_docker_permissions" in message, (what, message)
    assert "HostConfig.PidMode" in answers["PidMode host"][1]
    assert "HostConfig.Mounts" in answers["bind /proc"][1]
    assert "HostConfig.Binds" in answers["bind /"][1]
    refusals = [r for r in rt.parts.audit.records() if r.kind == "module.privileges_refused"]
    assert len(refusals) == len(cases)


async def test_refused_update_keeps_the_running_module(strict: tuple[RuntimeEnv, ManagementClient],
                                                       dockerd: Dockerd) -> None:
    _, mgmt = strict
    await mgmt.create_module(spec("steady", {"HostConfig": {"NetworkMode": "none"}}))
    await mgmt.action("steady", "start")
    before = _inspect(dockerd, "steady")["Id"]
    with pytest.raises(HttpError) as refused:
        await mgmt.update_module("steady", spec("steady", {"HostConfig": {"PidMode": "host"}}), start=True)
    assert refused.value.status == 422
    after = _inspect(dockerd, "steady")
    assert after["Id"] == before and after["State"]["Running"], "a refused update removed the module"


async def test_ordinary_module_works_with_elevated_permissions_off(strict: tuple[RuntimeEnv, ManagementClient],
                                                                   dockerd: Dockerd) -> None:
    rt, mgmt = strict
    calls = [["POST", "workload", "/modules/{name}/genid/{genid}/sign?api-version=2019-01-30",
              {"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="}]]
    ordinary = {"name": "sensor", "type": "docker", "imagePullPolicy": "never", "config": {
        "settings": {"image": TEST_IMAGE, "createOptions": {
            "Cmd": ["/usr/bin/python3", "-c", CLIENT_SCRIPT],
            # host networking stays allowed: many IoT Edge modules need it
            "HostConfig": {"NetworkMode": "host", "Mounts": host_python_binds(),
                           "Binds": ["/etc/localtime:/etc/localtime:ro"], "CapDrop": ["NET_RAW"],
                           "SecurityOpt": ["no-new-privileges"], "LogConfig": {
                               "Type": "json-file", "Config": {"max-size": "10m"}}}}},
        "env": [{"key": "EDGEWARD_TEST_CALLS", "value": json.dumps(calls)}]}}
    await mgmt.create_module(ordinary)
    await mgmt.action("sensor", "start")
    (sign,) = await module_results(rt.parts.engine, "sensor")
    assert sign["status"] == 200, sign
    hc = _inspect(dockerd, "sensor")["HostConfig"]
    assert hc["NetworkMode"] == "host" and set(hc["CapDrop"]) == {"NET_RAW", "CHOWN", "SETUID"}, hc
    assert not [r for r in rt.parts.audit.records() if r.kind.startswith("module.privileges_")]


async def test_privileged_module_is_allowed_when_elevated_permissions_are_on(
        elevated: tuple[RuntimeEnv, ManagementClient], dockerd: Dockerd) -> None:
    _, mgmt = elevated
    await mgmt.create_module(spec("admin", {"HostConfig": {"Privileged": True, "CapAdd": ["SYS_ADMIN"],
                                                           "NetworkMode": "none"}}))
    hc = _inspect(dockerd, "admin")["HostConfig"]
    assert hc["Privileged"] is True and hc["CapAdd"] == ["SYS_ADMIN"], hc
    assert not hc.get("CapDrop"), hc  # IoT Edge adds no drops when elevated permissions are on
    # Started without Privileged: this machine's own bounding set lacks CAP_SYS_RESOURCE, which privileged mode
    # asks for, so runc cannot start a privileged container here whatever Edgeward does.
    await mgmt.create_module(spec("capable", {"HostConfig": {"CapAdd": ["SYS_ADMIN"], "NetworkMode": "none"}},
                                  SHOW_CAPS))
    await mgmt.action("capable", "start")
    assert _cap_eff(await logs_until(mgmt, "capable", b"CAPS-DONE")) & (1 << CAP_SYS_ADMIN)
    # the rest of the rules step aside too: the operator chose to trust deployments with the host
    await mgmt.create_module(spec("hostpid", {"HostConfig": {"PidMode": "host", "Binds": ["/:/host:ro"]}}))
    assert _inspect(dockerd, "hostpid")["HostConfig"]["PidMode"] == "host"


# Run in a mount namespace of its own whose /tmp is empty, as systemd's PrivateTmp= gives the runtime's service.
_HIDDEN_PROBE = textwrap.dedent("""
    import json, sys
    from edgeward.runtime.privileges import (ElevatedOptionRefused, PrivilegePolicy, Protected, host_views,
                                             vet_create_options)
    engine_socket, protected, source = sys.argv[1:4]
    out = {}
    for label, views in (("engine", host_views(engine_socket)), ("own", ("/",))):
        try:
            vet_create_options({"HostConfig": {"Binds": [source + ":/x"]}},
                               PrivilegePolicy(False, (Protected(protected, "the state directory"),), views))
            out[label] = "accepted"
        except ElevatedOptionRefused as e:
            out[label] = e.message
    out["views"] = host_views(engine_socket)
    print(json.dumps(out))
""")


@pytest.mark.asyncio(loop_scope="session")
async def test_a_symlink_hidden_by_a_private_tmp_is_resolved_as_the_engine_sees_it(public_dir: Path,
                                                                                  dockerd: Dockerd) -> None:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) and root")
    protected = public_dir / "state"
    protected.mkdir()
    hidden = Path(tempfile.mkdtemp(prefix="edgeward-hidden-", dir="/tmp"))
    try:
        (hidden / "innocent").symlink_to(protected)
        src = str(Path(edgeward.__file__).resolve().parents[1])
        # As PrivateTmp hides /tmp from the daemon: a fresh tmpfs over /tmp in this namespace only. What the probe
        # itself needs and may live under /tmp (the engine's socket, the interpreter's environment, this checkout)
        # is bound back from the old /tmp, parked on /mnt; the directory holding the link is not.
        keep = sorted({p for p in (str(dockerd.socket.parent), sys.prefix, src) if p.startswith("/tmp/")})
        script = ('mount --bind /tmp /mnt && mount -t tmpfs tmpfs /tmp && '
                  'for p in $KEEP; do mkdir -p "$p" && mount --bind "/mnt/${p#/tmp/}" "$p"; done && '
                  'exec "$0" -c "$1" "$2" "$3" "$4"')
        run = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, sys.executable, _HIDDEN_PROBE,
             str(dockerd.socket), str(protected), str(hidden / "innocent")],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "PYTHONPATH": src, "KEEP": " ".join(keep)})
        assert run.returncode == 0, run.stderr
        out = json.loads(run.stdout)
        assert len(out["views"]) > 1, out  # the engine's root is read as well as this namespace's
        assert out["own"] == "accepted", out  # this namespace alone sees no symlink: the check must look further
        assert "the state directory" in out["engine"], out
    finally:
        shutil.rmtree(hidden, ignore_errors=True)


def _swap(shared: Path, target: Path) -> None:
    """What a module with /shared writable does from inside its container: replace a directory with a link."""
    (shared / "d").rmdir()
    (shared / "d").symlink_to(target)


async def test_a_bind_inside_another_modules_writable_bind_is_refused(
        strict: tuple[RuntimeEnv, ManagementClient], dockerd: Dockerd) -> None:
    """The writer of the parent could swap the child for a symlink to the state dir before the child starts."""
    rt, mgmt = strict
    shared = rt.base / "data" / "shared"
    (shared / "d").mkdir(parents=True)
    await mgmt.create_module(spec("swapper", {"HostConfig": {"NetworkMode": "none", "Binds": [f"{shared}:/shared"]}}))
    refused = {}
    for name, binds in (("evil2", [f"{shared}/d:/d:ro"]), ("evil3", [f"{shared}/d/../d/x:/d"]),
                        ("evil4", [f"{shared.parent}:/all"])):  # a writable parent of swapper's source swaps it too
        with pytest.raises(HttpError) as e:
            await mgmt.create_module(spec(name, {"HostConfig": {"NetworkMode": "none", "Binds": binds}}))
        refused[name] = (e.value.status, e.value.message)
        assert dockerd.cli("inspect", name, check=False).returncode != 0
    assert all(status == 422 for status, _ in refused.values()), refused
    assert "swapper" in refused["evil2"][1] and "symlink" in refused["evil2"][1], refused
    # one module with both: it could swap its own other bind
    with pytest.raises(HttpError) as own:
        await mgmt.create_module(spec("selfswap", {"HostConfig": {
            "NetworkMode": "none", "Binds": [f"{shared}:/shared", f"{shared}/d:/d:ro"]}}))
    assert own.value.status == 422
    # the same directory shared by two modules, or read-only nesting, stays allowed
    await mgmt.create_module(spec("peer", {"HostConfig": {"NetworkMode": "none", "Binds": [f"{shared}:/shared"]}}))
    (rt.base / "ro" / "d").mkdir(parents=True)
    await mgmt.create_module(spec("reader", {"HostConfig": {"NetworkMode": "none",
                                                            "Binds": [f"{rt.base}/ro:/ro:ro", f"{rt.base}/ro/d:/d:ro"]}}))


async def test_a_bind_swapped_for_a_symlink_after_create_is_refused_at_start(
        strict: tuple[RuntimeEnv, ManagementClient], dockerd: Dockerd) -> None:
    rt, mgmt = strict
    shared = rt.base / "shared"
    (shared / "d").mkdir(parents=True)
    show = ["sh", "-c", "ls /d; echo LS-DONE; sleep 3600"]
    await mgmt.create_module(spec("evil2", {"HostConfig": {"NetworkMode": "none", "Binds": [f"{shared}/d:/d"]}},
                                  show))
    _swap(shared, rt.base / "state")  # as a writer of `shared` would, between create and start
    for action in ("start", "restart"):
        with pytest.raises(HttpError) as refused:
            await mgmt.action("evil2", action)
        assert refused.value.status == 422, (action, refused.value.message)
        assert "state directory" in refused.value.message, refused.value.message
        assert not _inspect(dockerd, "evil2")["State"]["Running"], f"{action} ran the swapped module"
    records = [r for r in rt.parts.audit.records() if r.kind == "module.start_refused"]
    assert [r.module for r in records] == ["evil2", "evil2"], records
    assert records[0].detail["option"] == "HostConfig.Binds[0]"


async def test_a_swapped_module_started_by_the_engine_itself_is_stopped(
        strict: tuple[RuntimeEnv, ManagementClient], dockerd: Dockerd) -> None:
    """dockerd's restart policy (or `docker start`) starts a module without asking Edgeward: the runtime sees the
    start event, vets the module again and stops it."""
    rt, mgmt = strict
    shared = rt.base / "shared"
    (shared / "d").mkdir(parents=True)
    await mgmt.create_module(spec("evil5", {"HostConfig": {"NetworkMode": "none", "Binds": [f"{shared}/d:/d"]}}))
    _swap(shared, rt.base / "state")
    dockerd.cli("start", "evil5")
    deadline = time.monotonic() + 30
    while _inspect(dockerd, "evil5")["State"]["Running"]:
        assert time.monotonic() < deadline, "the module the engine started on its own kept running"
        await asyncio.sleep(0.1)
    records = [r for r in rt.parts.audit.records() if r.kind == "module.stopped_refused"]
    assert [r.module for r in records] == ["evil5"], records


async def test_a_module_created_with_elevated_permissions_does_not_start_once_they_are_off(
        strict: tuple[RuntimeEnv, ManagementClient], dockerd: Dockerd) -> None:
    """The operator turns the setting off and restarts Edgeward: the privileged container is still there."""
    rt, mgmt = strict
    runtime = rt.parts.runtime
    runtime.settings = replace(rt.settings, allow_elevated_docker_permissions=True)
    try:
        await mgmt.create_module(spec("oldadmin", {"HostConfig": {"CapAdd": ["SYS_ADMIN"], "NetworkMode": "none"}}))
    finally:
        runtime.settings = rt.settings
    assert _inspect(dockerd, "oldadmin")["HostConfig"]["CapAdd"] == ["SYS_ADMIN"]
    with pytest.raises(HttpError) as refused:
        await mgmt.action("oldadmin", "start")
    assert refused.value.status == 422 and "recreate" in refused.value.message, refused.value.message
    assert "HostConfig.CapAdd" in refused.value.message
    assert not _inspect(dockerd, "oldadmin")["State"]["Running"]
    # `edgeward check` names it rather than claiming Privileged and CapAdd are stripped
    config = rt.base / "check.toml"
    config.write_text(f'hostname = "dev1"\n[moby_runtime]\nuri = "{dockerd.uri}"\n')
    result = await asyncio.to_thread(CliRunner().invoke, check, [
        "-c", str(config), "--state-dir", str(rt.base / "check-state"), "--run-dir", str(rt.base / "check-run"),
        "--json"])
    row = {r["name"]: r for r in json.loads(result.stdout)}["elevated permissions"]
    assert row["outcome"] == "error" and "oldadmin (CapAdd)" in row["detail"], row
    assert "recreate" in row["fix"], row
