"""The Docker Engine API module engine against a real dockerd."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgeward.attest.cgroups import read_container_id
from edgeward.runtime.engine import ENGINE_LABEL, EngineError, LogOptions, ModuleNotFound, ModuleSpec
from edgeward.runtime.engines.moby import DockerEngine
from tests.fixtures.dockerd import TEST_IMAGE, Dockerd
from tests.fixtures.podman import Podman

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(params=["dockerd", "podman"])
def container_engine(request: pytest.FixtureRequest) -> Dockerd | Podman:
    """Both Docker Engine API implementations: Debian's dockerd and podman's compatible service."""
    return request.getfixturevalue("dockerd" if request.param == "dockerd" else "podman_service")  # type: ignore[no-any-return]


@pytest.fixture
async def engine(container_engine: Dockerd | Podman) -> AsyncIterator[DockerEngine]:
    eng = DockerEngine(container_engine.uri)
    yield eng
    for m in await eng.list():
        await eng.remove(m.name)
    await eng.close()


def _spec(name: str, cmd: list[str], workload: Path | None = None, **kw: object) -> ModuleSpec:
    return ModuleSpec(name=name, image=TEST_IMAGE, env={"IOTEDGE_MODULEID": name, "A": "from-runtime"},
                      create_options={"Cmd": cmd, "Env": ["A=from-options", "B=kept"],
                                      "HostConfig": {"NetworkMode": "none"}, **kw},
                      labels={"extra": "1"}, workload_dir=workload, pull_policy="never")


async def _lines(engine: DockerEngine, name: str, options: LogOptions) -> list[tuple[int, bytes]]:
    out = []
    async for chunk in engine.logs(name, options):
        out += [(chunk.stream, line) for line in chunk.data.splitlines()]
    return out


async def test_lifecycle(engine: DockerEngine, container_engine: Dockerd | Podman, tmp_path: Path) -> None:
    workload = tmp_path / "wl"
    workload.mkdir()
    (workload / "marker").write_text("visible\n")
    events = engine.events()
    first_event = asyncio.ensure_future(events.__anext__())
    created = await engine.create(_spec("m1", ["sh", "-c", "echo out; echo err >&2; env; cat /var/run/iotedge/marker;"
                                               " exec sleep 3600"], workload))
    assert created.state == "created" and created.image_id.startswith("sha256:")
    assert created.image_id == await engine.image_id(TEST_IMAGE)
    assert created.labels[ENGINE_LABEL] == "m1" and created.labels["extra"] == "1"
    ev = await asyncio.wait_for(first_event, 20)
    assert ev.action == "create" and ev.name == "m1"
    running = await engine.start("m1")
    assert running.state == "running" and running.pid
    assert read_container_id(running.pid) == running.engine_id
    assert await engine.engine_id_of_pid(running.pid) == running.engine_id
    assert await engine.engine_id_of_pid(1) is None

    async def until(text: bytes) -> list[tuple[int, bytes]]:
        async for chunk in engine.logs("m1", LogOptions(follow=True)):
            if text in chunk.data:
                break
        return await _lines(engine, "m1", LogOptions())

    lines = await asyncio.wait_for(until(b"visible"), 20)
    assert (1, b"out") in lines and (2, b"err") in lines
    assert (1, b"A=from-runtime") in lines and (1, b"B=kept") in lines
    assert (1, b"IOTEDGE_WORKLOADURI=unix:///var/run/iotedge/workload.sock") in lines
    tail = await _lines(engine, "m1", LogOptions(tail=1, timestamps=True))
    # One line, with its RFC 3339 time. (Which line is last differs: podman orders the two streams its own way.)
    assert len(tail) == 1 and tail[0][1][:2] == b"20" and tail[0][1].split(b" ", 1)[1] in {b"visible", b"err"}
    stats = await engine.stats("m1")
    assert "memory_stats" in stats or "cpu_stats" in stats

    container_engine.cli("create", "--name", "intruder", "--network", "none", TEST_IMAGE, "sleep", "1")
    try:
        assert [m.name for m in await engine.list()] == ["m1"]
        with pytest.raises(ModuleNotFound):
            await engine.inspect("intruder")  # a container Edgeward did not make is no module
    finally:
        container_engine.cli("rm", "-f", "intruder")

    stopped = await engine.stop("m1", timeout=1)
    assert stopped.state in ("stopped", "failed") and stopped.pid is None
    restarted = await engine.restart("m1")
    assert restarted.state == "running" and restarted.pid != running.pid
    await engine.remove("m1")
    with pytest.raises(ModuleNotFound):
        await engine.inspect("m1")
    await events.aclose()


async def test_clean_errors(engine: DockerEngine) -> None:
    with pytest.raises(EngineError) as missing:
        await engine.create(ModuleSpec(name="m2", image="registry.invalid/none:1", pull_policy="never"))
    assert missing.value.status == 400 and "imagePullPolicy is never" in missing.value.message
    with pytest.raises(EngineError) as pull:
        await engine.create(ModuleSpec(name="m2", image="registry.invalid/none:1"))
    assert "cannot pull registry.invalid/none:1" in pull.value.message and pull.value.status in (400, 502)
    await engine.create(_spec("m2", ["sleep", "3600"]))
    with pytest.raises(EngineError) as dup:
        await engine.create(_spec("m2", ["sleep", "3600"]))
    assert dup.value.status == 409
    assert await engine.image_id("no/such:image") is None


async def test_engine_restart_is_survived(dockerd: Dockerd) -> None:
    engine = DockerEngine(dockerd.uri)
    try:
        await _survive_restart(engine, dockerd)
    finally:
        for m in await engine.list():
            await engine.remove(m.name)
        await engine.close()


async def _survive_restart(engine: DockerEngine, dockerd: Dockerd) -> None:
    await engine.create(_spec("m3", ["sleep", "3600"]))
    await engine.start("m3")
    dockerd.restart()
    status = await engine.inspect("m3")  # the client reconnects on its own
    assert status.name == "m3" and status.state in ("stopped", "failed", "running")
    assert (await engine.start("m3")).state == "running"
