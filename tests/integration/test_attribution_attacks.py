"""Attribution by cgroup alone fails open: a container that can write the host's cgroupfs (a writable
/sys/fs/cgroup bind, CAP_SYS_ADMIN) moves itself into another module's cgroup to be taken for that module, or into
the root cgroup to be taken for "a host process" (root, so the whole management API). These attacks run against
the real runtime over a real dockerd; a caller is a module only when its pid and mount namespaces are its
container's init process's, and host only when they are the host's."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edgeward.attest.cgroups import read_container_id
from edgeward.attest.namespaces import is_host_process, namespaces_of
from edgeward.runtime.engine import ModuleEngine
from edgeward.runtime.engines.moby import DockerEngine
from edgeward.runtime.engines.process import ProcessEngine
from edgeward.runtime.mgmt_client import ManagementClient
from tests.fixtures.dockerd import TEST_IMAGE, Dockerd, host_python_binds
from tests.fixtures.modules import CLIENT_SCRIPT, module_results
from tests.fixtures.peers import CLIENT
from tests.fixtures.runtime import RuntimeEnv, serve_runtime

pytestmark = pytest.mark.asyncio(loop_scope="session")
SIGN = {"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="}
MGMT_VERSION = "2022-08-03"
HOST_CGROUP = "/host-cgroup"

# Runs before the test client (same interpreter): stops on SIGTERM; moves this process into the cgroup that
# EDGEWARD_TEST_MOVE_TO names ("docker/<id>", or "" for the root) in every hierarchy of the host's cgroupfs that has
# it, as an attacker with a writable cgroupfs does; and lets EDGEWARD_TEST_WORKLOADURI point the client at a socket
# other than its own.
MOVE_SCRIPT = textwrap.dedent(f"""
    import glob, os, signal
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # as pid 1, stop at once when the engine asks
    target = os.environ.get("EDGEWARD_TEST_MOVE_TO")
    if target is not None:
        moved = []
        for hierarchy in sorted(glob.glob("{HOST_CGROUP}/*/")):
            procs = os.path.join(hierarchy, target, "cgroup.procs")
            if os.path.exists(procs):
                with open(procs, "w") as f:
                    f.write("0")  # 0: the writing process itself
                moved.append(hierarchy)
        print("MOVED " + " ".join(moved), flush=True)
    if os.environ.get("EDGEWARD_TEST_WORKLOADURI"):
        os.environ["IOTEDGE_WORKLOADURI"] = os.environ["EDGEWARD_TEST_WORKLOADURI"]
""")


def _spec(name: str, calls: list[Any], *, mounts: list[dict[str, object]] | None = None,
          env: dict[str, str] | None = None, cap_add: list[str] | None = None,
          pid_mode: str | None = None) -> dict[str, Any]:
    host: dict[str, Any] = {"Mounts": host_python_binds() + (mounts or [])}
    if cap_add:
        host["CapAdd"] = cap_add
    if pid_mode:
        host["PidMode"] = pid_mode
    return {"name": name, "type": "docker", "imagePullPolicy": "never", "config": {
        "settings": {"image": TEST_IMAGE, "createOptions": {
            "Cmd": ["/usr/bin/python3", "-c", MOVE_SCRIPT + CLIENT_SCRIPT], "HostConfig": host}},
        "env": [{"key": "EDGEWARD_TEST_CALLS", "value": json.dumps(calls)},
                *({"key": k, "value": v} for k, v in (env or {}).items())]}}


def _attacker(rt: RuntimeEnv, calls: list[Any], move_to: str | None, env: dict[str, str] | None = None,
              pid_mode: str | None = None) -> dict[str, Any]:
    """A module deployed with elevated permissions: the host's cgroupfs bound writable, CAP_SYS_ADMIN, and (to
    reach them at all) the victim's workload directory and the management socket's directory; with `pid_mode`,
    another container's or the host's pid namespace. It moves itself to `move_to` first (None: it stays where it
    was put)."""
    mounts: list[dict[str, object]] = [
        {"Type": "bind", "Source": "/sys/fs/cgroup", "Target": HOST_CGROUP},
        {"Type": "bind", "Source": str(rt.settings.workload_root / "victim"), "Target": "/var/run/victim"},
        {"Type": "bind", "Source": str(rt.settings.mgmt_dir), "Target": "/var/run/iotedge-mgmt"}]
    moves = {"EDGEWARD_TEST_MOVE_TO": move_to} if move_to is not None else {}
    return _spec("attacker", calls, mounts=mounts, cap_add=["SYS_ADMIN"], pid_mode=pid_mode, env={
        **moves, "IOTEDGE_MANAGEMENTURI": "unix:///var/run/iotedge-mgmt/mgmt.sock", **(env or {})})


@pytest.fixture
async def rt(request: pytest.FixtureRequest, public_dir: Path, dockerd: Dockerd) -> AsyncIterator[RuntimeEnv]:
    # Elevated permissions allowed on purpose: the attack needs them, and attribution must hold even then.
    doc = {"hostname": "edge-attribution", "allow_elevated_docker_permissions": True,
           "moby_runtime": {"uri": dockerd.uri, "network": "none"},
           "edgeward": {"runtime": {"engine": "docker", "watchdog_seconds": 1}}}
    async with serve_runtime(request, public_dir, DockerEngine(dockerd.uri), doc) as env:
        try:
            yield env
        finally:
            for m in await env.parts.engine.list():
                await env.parts.engine.remove(m.name)


async def _victim(rt: RuntimeEnv, mgmt: ManagementClient) -> tuple[str, str]:
    """A running module that signs for itself once; its container id and generation id."""
    await mgmt.create_module(_spec("victim", [["POST", "workload", "/modules/{name}/genid/{genid}/sign"
                                                                   "?api-version=2019-01-30", SIGN]]))
    await mgmt.action("victim", "start")
    (own,) = await module_results(rt.parts.engine, "victim")
    assert own["status"] == 200, own
    reg = rt.parts.registry.get("victim")
    assert reg is not None
    return reg.engine_id, reg.generation_id


async def _attacker_pid(rt: RuntimeEnv) -> int:
    pid = (await rt.parts.engine.inspect("attacker")).pid
    assert pid is not None
    return pid


# With the victim's pid namespace shared ("container:victim"), only the mount namespace tells them apart.
@pytest.mark.parametrize("pid_mode", [None, "container:victim"])
async def test_module_that_moves_into_another_modules_cgroup_cannot_sign_as_it(
        rt: RuntimeEnv, mgmt: ManagementClient, pid_mode: str | None) -> None:
    victim_id, victim_gen = await _victim(rt, mgmt)
    sign_as_victim = ["POST", "workload", f"/modules/victim/genid/{victim_gen}/sign?api-version=2019-01-30", SIGN]
    await mgmt.create_module(_attacker(rt, [sign_as_victim], f"docker/{victim_id}",
                                       {"EDGEWARD_TEST_WORKLOADURI": "unix:///var/run/victim/workload.sock"},
                                       pid_mode))
    await mgmt.action("attacker", "start")
    (signed,) = await module_results(rt.parts.engine, "attacker")
    # The move worked: by its cgroup, the attacker is now the victim container's.
    pid = await _attacker_pid(rt)
    assert read_container_id(pid) == victim_id, Path(f"/proc/{pid}/cgroup").read_text()
    assert signed["status"] == 403, signed
    assert "container_of" in signed["body"]["message"], signed
    assert f"names container {victim_id[:12]} (module victim)" in signed["body"]["message"], signed


# With the host's pid namespace ("host"), only the mount namespace shows it is not a host process.
@pytest.mark.parametrize("pid_mode", [None, "host"])
async def test_module_that_moves_into_the_root_cgroup_is_not_host_root(
        rt: RuntimeEnv, mgmt: ManagementClient, pid_mode: str | None) -> None:
    await _victim(rt, mgmt)
    calls = [["GET", "mgmt", f"/modules?api-version={MGMT_VERSION}", None],
             ["POST", "mgmt", f"/modules/victim/stop?api-version={MGMT_VERSION}", None],
             ["POST", "workload", "/modules/{name}/genid/{genid}/sign?api-version=2019-01-30", SIGN]]
    await mgmt.create_module(_attacker(rt, calls, "", pid_mode=pid_mode))
    await mgmt.action("attacker", "start")
    listing, stop, own_sign = await module_results(rt.parts.engine, "attacker")
    # The move worked: by its cgroup, the attacker is in no container at all, yet not in the host's namespaces.
    pid = await _attacker_pid(rt)
    assert read_container_id(pid) is None, Path(f"/proc/{pid}/cgroup").read_text()
    assert not is_host_process(pid)
    for answer in (listing, stop, own_sign):
        assert answer["status"] == 403, answer
        assert "container_of" in answer["body"]["message"], answer
        assert "are not the host's" in answer["body"]["message"], answer
    assert (await rt.parts.engine.inspect("victim")).state == "running"


async def test_modules_and_host_root_are_still_attributed(rt: RuntimeEnv, mgmt: ManagementClient,
                                                          dockerd: Dockerd) -> None:
    victim_id, _ = await _victim(rt, mgmt)  # the victim signed for itself: 200
    # A module granted the same elevated permissions, that stays where it was put, is still itself.
    own = ["POST", "workload", "/modules/{name}/genid/{genid}/sign?api-version=2019-01-30", SIGN]
    listing = ["GET", "mgmt", f"/modules?api-version={MGMT_VERSION}", None]
    await mgmt.create_module(_attacker(rt, [own, listing], None))
    await mgmt.action("attacker", "start")
    signed, refused = await module_results(rt.parts.engine, "attacker")
    assert signed["status"] == 200, signed
    assert refused["status"] == 403 and "not the edge agent" in refused["body"]["message"], refused
    # A second process of a module (docker exec) shares its init's namespaces and is that module too.
    victim = await rt.parts.engine.inspect("victim")
    assert victim.pid is not None
    # (asynchronously: the workload API it calls is served by this event loop)
    script = CLIENT_SCRIPT.replace("time.sleep(3600)", "")
    proc = await asyncio.create_subprocess_exec("docker", "-H", dockerd.uri, "exec", "victim", "/usr/bin/python3",
                                                "-c", script, stdout=asyncio.subprocess.PIPE)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0 and b'RESULT {"status": 200' in out, out
    assert namespaces_of(victim.pid) is not None and read_container_id(victim.pid) == victim_id
    # The test process is host root: the whole management API.
    names = {m["name"] for m in (await mgmt.list_modules())}
    assert {"victim", "attacker"} <= names


async def test_restarted_module_is_measured_against_its_new_init(rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    """A container's init is remembered only while it lives: after a restart the new init is the reference (the
    kernel may even hand the new namespaces the old ones' numbers, so only live processes are compared)."""
    await mgmt.create_module(_spec("restarter", []))
    await mgmt.action("restarter", "start")
    engine = rt.parts.engine
    first = await engine.inspect("restarter")
    assert first.pid is not None and await engine.engine_id_of_pid(first.pid) == first.engine_id
    await mgmt.action("restarter", "restart")
    second = await engine.inspect("restarter")
    assert second.pid is not None and second.pid != first.pid and namespaces_of(first.pid) is None
    assert await engine.engine_id_of_pid(second.pid) == second.engine_id


async def _root_client(sock: Path, path: str, *wrapper: str) -> tuple[int, dict[str, Any]]:
    """GET `path` on `sock` as root from a fresh process, run under `wrapper` (asynchronously: this event loop
    serves the socket)."""
    proc = await asyncio.create_subprocess_exec(*wrapper, "/usr/bin/python3", "-c", CLIENT, str(sock), "GET", path,
                                                stdout=asyncio.subprocess.PIPE)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    status, _, body = out.decode().partition(" ")
    return int(status), json.loads(body)


@pytest.mark.parametrize("kind", ["docker", "process"])
async def test_root_process_in_namespaces_of_its_own_is_not_host_root(request: pytest.FixtureRequest,
                                                                      public_dir: Path, kind: str) -> None:
    """Root in a pid and mount namespace of its own, in no container and under no supervisor, is no module and
    not the host: whatever the engine, it is refused at container_of, while root on the host is admitted."""
    engine: ModuleEngine = (DockerEngine(request.getfixturevalue("dockerd").uri) if kind == "docker" else
                            ProcessEngine(public_dir / "state" / "runtime" / "processes", stop_timeout=2.0,
                                          allow_elevated=True))  # the module is root, as the test's subject
    doc: dict[str, Any] = {"hostname": "edge-unshared"}
    if isinstance(engine, DockerEngine):
        doc["moby_runtime"] = {"uri": engine.url, "network": "none"}
    async with serve_runtime(request, public_dir, engine, doc) as env:
        path = f"/modules?api-version={MGMT_VERSION}"
        status, body = await _root_client(env.mgmt_socket, path, "unshare", "--pid", "--mount", "--fork")
        assert status == 403 and "container_of" in body["message"], (status, body)
        assert "are not the host's" in body["message"], body
        status, body = await _root_client(env.mgmt_socket, path)
        assert status == 200 and body["modules"] == [], (status, body)
