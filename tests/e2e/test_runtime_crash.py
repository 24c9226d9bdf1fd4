"""kill -9 of the daemon at random points of module creation (containers on a real dockerd): after each restart,
every module whose creation was answered is there with its generation, every registration has its container,
and no Edgeward-labelled container is left without a registration."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest

from edgeward.runtime.engine import ENGINE_LABEL
from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.supervise import start_daemon, stop_daemon
from tests.fixtures.dockerd import TEST_IMAGE, Dockerd

pytestmark = pytest.mark.asyncio(loop_scope="session")
KILLS = int(os.environ.get("EDGEWARD_CRASH_KILLS", "12"))


def _spec(name: str) -> dict[str, Any]:
    return {"name": name, "imagePullPolicy": "never", "config": {"settings": {
        "image": TEST_IMAGE, "createOptions": {"Cmd": ["sleep", "3600"], "HostConfig": {"NetworkMode": "none"}}}}}


async def _create_until_killed(sock: Path, prefix: str, answered: dict[str, str]) -> None:
    mgmt = ManagementClient(sock)
    try:
        for i in range(10_000):
            created = await mgmt.create_module(_spec(f"{prefix}-{i}"))
            answered[created["name"]] = created["id"]
    except Exception:  # the daemon was killed under us, as intended
        return
    finally:
        await mgmt.close()


async def test_kill_9_during_module_creation(public_dir: Path, dockerd: Dockerd) -> None:
    config = public_dir / "config.toml"
    config.write_text(f'[moby_runtime]\nuri = "{dockerd.uri}"\nnetwork = "none"\n[edgeward.runtime]\nengine = "docker"\n')
    args = ["run", "-c", str(config), "--state-dir", str(public_dir / "state"), "--run-dir", str(public_dir / "run")]
    sock = public_dir / "run" / "mgmt" / "mgmt.sock"
    answered: dict[str, str] = {}
    rng = random.Random(11)
    loop = asyncio.get_running_loop()
    try:
        for round_ in range(KILLS):
            proc = await loop.run_in_executor(None, start_daemon, args)
            try:
                task = asyncio.create_task(_create_until_killed(sock, f"r{round_}", answered))
                await asyncio.sleep(rng.uniform(0.02, 0.5))
                os.kill(proc.pid, signal.SIGKILL)
                await task
            finally:
                await loop.run_in_executor(None, stop_daemon, proc)
        assert len(answered) >= KILLS
        proc = await loop.run_in_executor(None, start_daemon, args)
        mgmt = ManagementClient(sock)
        try:
            listed = {m["name"]: m for m in await mgmt.list_modules()}
            for name, container_id in answered.items():
                assert name in listed, f"answered module {name} is gone"
                assert listed[name]["id"] == container_id
            for m in listed.values():
                assert m["status"]["runtimeStatus"]["status"] != "unknown", m  # a registration without container
            labelled = {line.split()[1]: line.split()[0] for line in dockerd.cli(
                "ps", "-a", "--filter", f"label={ENGINE_LABEL}", "--format", "{{.ID}} {{.Names}}").stdout.splitlines()}
            assert set(labelled) == set(listed), (set(labelled) ^ set(listed))  # no orphan containers
            identities = {i["moduleId"] for i in await mgmt.identities()}
            assert set(listed) <= identities
        finally:
            await mgmt.close()
            await loop.run_in_executor(None, stop_daemon, proc)
    finally:
        ids = dockerd.cli("ps", "-aq", "--filter", f"label={ENGINE_LABEL}").stdout.split()
        if ids:
            dockerd.cli("rm", "-f", *ids, check=False)
