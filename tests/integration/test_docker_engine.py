"""The Docker Engine API module engine against both real engines (Debian's dockerd and podman's compatible
service): what a module sees inside its container, the lifecycle and its events, logs, attestation of a pid,
the refusals, and a dockerd restart under a live engine object."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from edgeward.runtime.engine import ENGINE_LABEL, EngineError, EngineEvent, LogOptions, ModuleNotFound, ModuleSpec
from edgeward.runtime.engines.moby import DockerEngine
from tests.fixtures.dockerd import TEST_IMAGE, Dockerd, host_python_binds
from tests.fixtures.engines import EngineUnderTest

pytestmark = pytest.mark.asyncio(loop_scope="session")

# A module that answers SIGTERM at once (a shell as pid 1 ignores it otherwise, and every stop would wait out
# its timeout), prints to both streams, and then idles until stopped.
IDLE = 'trap "exit 0" TERM; {script}; echo ready; sleep 3600 & wait'


def _spec(name: str, image: str, script: str = "true", *, workload: Path | None = None,
          options: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> ModuleSpec:
    return ModuleSpec(name=name, image=image, env=env or {"IOTEDGE_MODULEID": name},
                      create_options={"Cmd": ["sh", "-c", IDLE.format(script=script)],
                                      "HostConfig": {"NetworkMode": "none"}, **(options or {})},
                      workload_dir=workload, pull_policy="never")


class EventLog:
    """Collects an engine's events in the background so a test awaits the one it expects (never sleeps)."""

    def __init__(self, engine: DockerEngine) -> None:
        self.seen: list[EngineEvent] = []
        self.ended = asyncio.Event()
        self._changed = asyncio.Condition()
        self._events = engine.events()
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for event in self._events:
                async with self._changed:
                    self.seen.append(event)
                    self._changed.notify_all()
        finally:
            self.ended.set()

    async def wait(self, action: str, name: str, timeout: float = 20) -> EngineEvent:
        def match() -> EngineEvent | None:
            return next((e for e in self.seen if e.action == action and e.name == name), None)

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: match() is not None)
        found = match()
        assert found is not None
        return found

    async def subscribed(self, engine: DockerEngine, image: str) -> None:
        """Return once the subscription is live: the engine only reports what happens after it registered us,
        and nothing tells the client when that was, so a probe module is made until its events arrive."""
        for attempt in range(20):
            name = f"probe{attempt}"
            await engine.create(_spec(name, image))
            await engine.remove(name)
            with contextlib.suppress(TimeoutError):
                await self.wait("create", name, timeout=1)
                return
        raise AssertionError("the engine never reported a probe module's events")

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._events.aclose()  # type: ignore[attr-defined]


async def _logs(engine: DockerEngine, name: str, options: LogOptions) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    async for chunk in engine.logs(name, options):
        out += [(chunk.stream, line) for line in chunk.data.splitlines()]
    return out


async def _follow(engine: DockerEngine, name: str, until: Callable[[list[tuple[int, bytes]]], bool]) -> None:
    """Follow a module's logs until they show what the test waits for."""
    lines: list[tuple[int, bytes]] = []
    async with asyncio.timeout(20):
        async for chunk in engine.logs(name, LogOptions(follow=True)):
            lines += [(chunk.stream, line) for line in chunk.data.splitlines()]
            if until(lines):
                return


async def _raw(uri: str, engine_id: str) -> dict[str, Any]:
    """The engine's own inspect document, to check what was really sent in the create body."""
    docker = aiodocker.Docker(url=uri)
    try:
        return dict((await docker.containers.get(engine_id))._container)
    finally:
        await docker.close()


async def test_module_sees_its_env_workload_socket_dir_and_create_options(
        container_engine: EngineUnderTest, tmp_path: Path) -> None:
    engine, image = container_engine.engine, container_engine.image
    workload, extra = tmp_path / "wl", tmp_path / "extra"
    workload.mkdir()
    extra.mkdir()
    (workload / "marker").write_text("workload-dir\n")
    (extra / "marker").write_text("extra-bind\n")
    options = {
        "Env": ["A=from-options", "B=kept", "IOTEDGE_WORKLOADURI=unix:///elsewhere.sock"],
        "WorkingDir": "/tmp",
        "Hostname": "edge-mod",
        "Labels": {"from-options": "x", ENGINE_LABEL: "someone-else"},
        "HostConfig": {"NetworkMode": "none", "Binds": [f"{extra}:/extra:ro"],
                       "RestartPolicy": {"Name": "always"}},
    }
    script = "env; pwd; cat /proc/sys/kernel/hostname /var/run/iotedge/marker /extra/marker"
    created = await engine.create(_spec("env1", image, script, workload=workload, options=options,
                                        env={"IOTEDGE_MODULEID": "env1", "A": "from-runtime"}))
    assert created.state == "created"
    assert created.labels[ENGINE_LABEL] == "env1" and created.labels["from-options"] == "x"
    raw = await _raw(container_engine.service.uri, created.engine_id)
    # The watchdog decides restarts, so a deployment's restart policy is not handed to the engine.
    assert raw["HostConfig"]["RestartPolicy"]["Name"] in ("no", "")
    await engine.start("env1")
    await _follow(engine, "env1", lambda lines: (1, b"ready") in lines)
    lines = {line for stream, line in await _logs(engine, "env1", LogOptions()) if stream == 1}
    # The runtime's variables win over createOptions' (IoT Edge's merge), the others are kept.
    assert {b"A=from-runtime", b"B=kept", b"IOTEDGE_MODULEID=env1",
            b"IOTEDGE_WORKLOADURI=unix:///var/run/iotedge/workload.sock"} <= lines
    assert b"A=from-options" not in lines and b"IOTEDGE_WORKLOADURI=unix:///elsewhere.sock" not in lines
    # createOptions pass through, and HostConfig is merged with the workload mount rather than replaced by it.
    assert {b"/tmp", b"edge-mod", b"workload-dir", b"extra-bind"} <= lines


async def test_lifecycle_inspect_stats_stop_restart_remove_and_their_events(
        container_engine: EngineUnderTest) -> None:
    engine, image = container_engine.engine, container_engine.image
    events = EventLog(engine)
    try:
        await events.subscribed(engine, image)
        created = await engine.create(_spec("life", image))
        assert created.image_id.startswith("sha256:") and created.image_id == await engine.image_id(image)
        # Podman reports the image by its normalised name ("localhost/..."); the registration keeps the spec's.
        assert created.pid is None and created.image in (image, f"localhost/{image}")
        running = await engine.start("life")
        assert running.state == "running" and running.pid and running.started_at
        assert running.engine_id == created.engine_id
        assert (await engine.inspect("life")).pid == running.pid
        await events.wait("create", "life")
        started = await events.wait("start", "life")
        assert started.engine_id == created.engine_id and started.labels.get(ENGINE_LABEL) == "life"

        stats = await engine.stats("life")
        assert "memory_stats" in stats and "cpu_stats" in stats

        stopped = await engine.stop("life", timeout=5)
        assert stopped.state == "stopped" and stopped.pid is None and stopped.exit_code == 0
        assert (await events.wait("die", "life")).exit_code == 0
        restarted = await engine.restart("life")
        assert restarted.state == "running" and restarted.pid not in (None, running.pid)
        await engine.remove("life")
        with pytest.raises(ModuleNotFound):
            await engine.inspect("life")
        assert [e.action for e in events.seen if e.name == "life"][:2] == ["create", "start"]
    finally:
        await events.close()


async def test_removing_a_module_is_reported_as_destroy(container_engine: EngineUnderTest) -> None:
    # Podman 4.3's compatible service names the event "remove" (Docker: "destroy"); the engine maps it.
    engine = container_engine.engine
    events = EventLog(engine)
    try:
        await events.subscribed(engine, container_engine.image)
        created = await engine.create(_spec("gone", container_engine.image))
        await engine.remove("gone")
        destroyed = await events.wait("destroy", "gone", timeout=3)
        assert destroyed.engine_id == created.engine_id
    finally:
        await events.close()


async def test_logs_keep_stdout_and_stderr_apart_and_honour_tail_timestamps_since_until(
        container_engine: EngineUnderTest) -> None:
    engine = container_engine.engine
    begun = int(time.time())
    await engine.create(_spec("logs1", container_engine.image, "echo out1; echo err1 >&2; echo out2"))
    await engine.start("logs1")
    await _follow(engine, "logs1", lambda lines: (1, b"ready") in lines and (2, b"err1") in lines)

    lines = await _logs(engine, "logs1", LogOptions())
    assert [line for stream, line in lines if stream == 1] == [b"out1", b"out2", b"ready"]
    assert [line for stream, line in lines if stream == 2] == [b"err1"]
    assert len(await _logs(engine, "logs1", LogOptions(tail=2))) == 2
    stamped = await _logs(engine, "logs1", LogOptions(tail=1, timestamps=True))
    assert len(stamped) == 1 and re.match(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d) ", stamped[0][1])
    assert await _logs(engine, "logs1", LogOptions(since=begun + 3600)) == []
    assert await _logs(engine, "logs1", LogOptions(until=begun - 3600)) == []
    assert len(await _logs(engine, "logs1", LogOptions(since=begun - 5, until=int(time.time()) + 5))) == 4


async def test_followed_logs_end_when_the_module_stops(container_engine: EngineUnderTest) -> None:
    engine = container_engine.engine
    await engine.create(_spec("follow1", container_engine.image))
    await engine.start("follow1")
    ready = asyncio.Event()
    lines: list[bytes] = []

    async def follow() -> None:
        async for chunk in engine.logs("follow1", LogOptions(follow=True)):
            lines.extend(chunk.data.splitlines())
            if b"ready" in lines:
                ready.set()

    task = asyncio.create_task(follow())
    try:
        async with asyncio.timeout(20):
            await ready.wait()
        assert not task.done()  # still following a running module
        await engine.stop("follow1", timeout=5)
        async with asyncio.timeout(20):
            await task  # the stream ends by itself once the container is gone
    finally:
        task.cancel()


async def test_list_and_attestation_ignore_containers_without_our_label(container_engine: EngineUnderTest) -> None:
    engine, service = container_engine.engine, container_engine.service
    running = await engine.start((await engine.create(_spec("mine", container_engine.image))).name)
    assert running.pid is not None
    assert await engine.engine_id_of_pid(running.pid) == running.engine_id
    # A caller is rarely the container's first process: its children are attributed to the same module.
    children: list[str] = []
    deadline = time.monotonic() + 10
    while not children and time.monotonic() < deadline:  # the container's shell forks its child a moment later
        children = Path(f"/proc/{running.pid}/task/{running.pid}/children").read_text().split()
        if not children:
            await asyncio.sleep(0.02)
    assert children and await engine.engine_id_of_pid(int(children[0])) == running.engine_id
    assert await engine.engine_id_of_pid(os.getpid()) is None  # the test runner is in no container

    service.cli("run", "-d", "--name", "intruder", "--network", "none", container_engine.image,
                "sh", "-c", IDLE.format(script="true"))  # podman's `rm -f` waits out the stop timeout otherwise
    try:
        assert [m.name for m in await engine.list()] == ["mine"]
        with pytest.raises(ModuleNotFound):
            await engine.inspect("intruder")  # a container Edgeward did not make is no module of its
        with pytest.raises(ModuleNotFound):
            await engine.remove("intruder")
        pid = int(service.cli("inspect", "--format", "{{.State.Pid}}", "intruder").stdout.strip())
        assert pid > 0 and await engine.engine_id_of_pid(pid) is None
    finally:
        service.cli("rm", "-f", "intruder")


async def test_host_python_runs_inside_a_module(container_engine: EngineUnderTest, tmp_path: Path) -> None:
    """Later tests run a workload API client inside containers on the host's interpreter."""
    engine = container_engine.engine
    (tmp_path / "marker").write_text("seen-from-python")
    code = "import sys; print(sys.version_info[0], open('/var/run/iotedge/marker').read())"
    spec = ModuleSpec(name="py1", image=container_engine.image, pull_policy="never", workload_dir=tmp_path,
                      create_options={"Cmd": ["/usr/bin/python3", "-c", code],
                                      "HostConfig": {"NetworkMode": "none", "Mounts": host_python_binds()}})
    await engine.create(spec)
    await engine.start("py1")
    async with asyncio.timeout(20):
        lines = [line async for chunk in engine.logs("py1", LogOptions(follow=True))
                 for line in chunk.data.splitlines()]
    assert lines == [b"3 seen-from-python"]
    assert (await engine.inspect("py1")).exit_code == 0


async def test_refusals_are_clean_engine_errors(container_engine: EngineUnderTest) -> None:
    engine, image = container_engine.engine, container_engine.image
    with pytest.raises(EngineError) as pull:
        await engine.pull("registry.invalid/edgeward/none:1")
    assert "cannot pull registry.invalid/edgeward/none:1" in pull.value.message
    assert pull.value.status in (400, 502) and "Traceback" not in pull.value.message
    with pytest.raises(EngineError) as on_create:
        await engine.create(ModuleSpec(name="m2", image="registry.invalid/edgeward/none:1"))
    assert "cannot pull" in on_create.value.message
    with pytest.raises(EngineError) as never:
        await engine.create(ModuleSpec(name="m2", image="edgeward-test/absent:1", pull_policy="never"))
    assert never.value.status == 400 and "imagePullPolicy is never" in never.value.message
    assert await engine.image_id("edgeward-test/absent:1") is None

    await engine.create(_spec("m2", image))
    with pytest.raises(EngineError) as duplicate:
        await engine.create(_spec("m2", image))
    assert duplicate.value.status == 409 and "m2" in duplicate.value.message
    for call in (engine.inspect, engine.start, engine.stop, engine.restart, engine.remove, engine.stats):
        with pytest.raises(ModuleNotFound) as missing:
            await call("nosuch")
        assert missing.value.status == 404 and "nosuch" in missing.value.message
    assert [m.name for m in await engine.list()] == ["m2"]


async def test_engine_object_outlives_a_dockerd_restart(dockerd: Dockerd) -> None:
    engine = DockerEngine(dockerd.uri)
    events = EventLog(engine)
    try:
        await events.subscribed(engine, TEST_IMAGE)
        await engine.create(_spec("m3", TEST_IMAGE))
        await engine.start("m3")
        dockerd.restart()
        async with asyncio.timeout(20):
            await events.ended.wait()  # the event stream ends when the engine goes away; the caller resubscribes
        status = await engine.inspect("m3")  # the next call reconnects on its own
        assert status.name == "m3" and status.state in ("stopped", "failed")
        assert (await engine.start("m3")).state == "running"
    finally:
        await events.close()
        for module in await engine.list():
            await engine.remove(module.name)
        await engine.close()
