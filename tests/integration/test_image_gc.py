"""[image_garbage_collection] on a real dockerd: images no module has used for longer than the threshold are removed
at the cleanup time; images a container uses, the agent's, and images Edgeward never used are kept. Time is driven
by the collector's injectable clock and sleep (no waiting for days)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeward.runtime.engines.moby import DockerEngine
from edgeward.runtime.image_gc import DAY, ImageCollector, ImageGcSettings, ImageUse
from edgeward.runtime.mgmt_client import ManagementClient
from tests.fixtures.dockerd import Dockerd
from tests.fixtures.runtime import serve_runtime

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def images(dockerd: Dockerd) -> Iterator[dict[str, tuple[str, str]]]:
    """Fresh images (name -> (reference, id)), each its own id (never a tag of the shared test image)."""
    made: dict[str, tuple[str, str]] = {}
    for name in ("old", "inuse", "agent", "untracked", "lonely-agent"):
        ref = f"edgeward-gc/{name}:{uuid.uuid4().hex[:8]}"
        dockerd.cli("import", "--message", ref, str(dockerd.root / "rootfs.tar"), ref)
        made[name] = (ref, dockerd.cli("image", "inspect", "-f", "{{.Id}}", ref).stdout.strip())
    assert len({i for _, i in made.values()}) == len(made)
    try:
        yield made
    finally:
        for ref, _ in made.values():
            dockerd.cli("rmi", "-f", ref, check=False)


def _present(dockerd: Dockerd, image_id: str) -> bool:
    return dockerd.cli("image", "inspect", image_id, check=False).returncode == 0


def _spec(name: str, image: str) -> dict[str, object]:
    return {"name": name, "type": "docker", "imagePullPolicy": "never",
            "config": {"settings": {"image": image, "createOptions": {"Cmd": ["sleep", "3600"]}}, "env": []}}


async def test_unused_images_past_the_threshold_are_removed_and_in_use_and_agent_images_kept(
        request: pytest.FixtureRequest, public_dir: Path, dockerd: Dockerd,
        images: dict[str, tuple[str, str]]) -> None:
    agent = {"name": "edgeAgent", "type": "docker", "imagePullPolicy": "never",
             "config": {"image": images["agent"][0], "createOptions": {"Cmd": ["sleep", "3600"]}}}
    doc = {"hostname": "edge-gc", "moby_runtime": {"uri": dockerd.uri, "network": "none"}, "agent": agent,
           "image_garbage_collection": {"image_age_cleanup_threshold": "1d", "cleanup_time": "03:00"},
           "edgeward": {"runtime": {"engine": "docker", "watchdog_seconds": 1}}}
    async with serve_runtime(request, public_dir, DockerEngine(dockerd.uri), doc) as rt:
        try:
            gc = rt.parts.image_gc
            assert gc is not None and gc.settings.threshold == DAY and gc.settings.cleanup_minute == 180
            mgmt = ManagementClient(rt.mgmt_socket)
            try:
                await mgmt.create_module(_spec("oldmod", images["old"][0]))
                await mgmt.delete_module("oldmod")
                await mgmt.create_module(_spec("usemod", images["inuse"][0]))  # created, never started
            finally:
                await mgmt.close()
            recorded = set(rt.parts.runtime.image_use.read()) if rt.parts.runtime.image_use else set()
            assert {images["old"][1], images["inuse"][1], images["agent"][1]} <= recorded

            assert await gc.collect_once() == []  # nothing is older than a day yet
            assert _present(dockerd, images["old"][1])
            gc.clock = lambda: dt.datetime.now() + dt.timedelta(days=1, minutes=1)
            assert await gc.collect_once() == [images["old"][1]]
            assert not _present(dockerd, images["old"][1])
            for kept in ("inuse", "agent", "untracked"):
                assert _present(dockerd, images[kept][1]), kept
        finally:
            for m in await rt.parts.engine.list():
                await rt.parts.engine.remove(m.name)


async def test_agent_image_is_kept_even_when_no_container_uses_it(
        dockerd: Dockerd, tmp_path: Path, images: dict[str, tuple[str, str]]) -> None:
    ref, image_id = images["lonely-agent"]
    use = ImageUse(tmp_path / "image_use.json")
    use.record(image_id, when=0.0)  # last used in 1970
    engine = DockerEngine(dockerd.uri)
    try:
        assert await ImageCollector(engine, use, ImageGcSettings(), ref).collect_once() == []
        assert _present(dockerd, image_id)
        assert use.read()[image_id] > 0  # kept as in use, like an image a container runs
        use.record(image_id, when=0.0)  # the same image, no longer the agent's: it goes
        assert await ImageCollector(engine, use, ImageGcSettings(), None).collect_once() == [image_id]
        assert not _present(dockerd, image_id) and use.read() == {}
    finally:
        await engine.close()


async def test_collection_runs_at_cleanup_time_then_every_recurrence(
        dockerd: Dockerd, tmp_path: Path, images: dict[str, tuple[str, str]]) -> None:
    """aziot-edged's schedule: sleep until cleanup_time, collect, then every cleanup_recurrence at that time."""
    image_id = images["old"][1]
    now = [dt.datetime(2026, 12, 2, 0, 0, 0)]
    sleeps: list[float] = []
    runs_at: list[dt.datetime] = []
    use = ImageUse(tmp_path / "image_use.json")
    use.record(image_id, when=now[0].timestamp() - 3 * DAY)
    engine = DockerEngine(dockerd.uri)
    settings = ImageGcSettings(recurrence=2 * DAY, threshold=7 * DAY, cleanup_minute=90)
    gc = ImageCollector(engine, use, settings, None, clock=lambda: now[0])
    collect = gc.collect_once

    async def counted() -> list[str]:
        runs_at.append(now[0])
        return await collect()

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 4:
            raise asyncio.CancelledError
        now[0] += dt.timedelta(seconds=seconds)

    gc.collect_once = counted  # type: ignore[method-assign]
    gc.sleep = fake_sleep
    try:
        with pytest.raises(asyncio.CancelledError):
            await gc.run()
        assert sleeps[:3] == [90 * 60, 2 * DAY, 2 * DAY]
        assert runs_at == [dt.datetime(2026, 12, 2, 1, 30), dt.datetime(2026, 12, 4, 1, 30),
                           dt.datetime(2026, 12, 6, 1, 30)]
        # unused since 11-29: kept at 12-02 and 12-04 (under 7 days), removed at 12-06
        assert not _present(dockerd, image_id)
    finally:
        await engine.close()
