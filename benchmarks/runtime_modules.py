"""The module runtime: time from `POST /modules` (+ start) to a running module, for 20 modules; the daemon's
resident memory (VmRSS of the daemon process alone; the modules are processes of their own) with 50 modules, which
benchmarks/__main__.py prints against the floor of footprint.py (goal <= 1.3x). Host-process modules by default;
`--engine docker` against a dockerd the caller started."""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.supervise import running_daemon

from .footprint import rss_mb

SLEEPER = "import time\nwhile True: time.sleep(3600)\n"


def _spec(name: str, image: str | None) -> dict[str, Any]:
    if image is None:
        return {"name": name, "imagePullPolicy": "never",
                "config": {"image": sys.executable, "createOptions": {"Cmd": ["-c", SLEEPER]}}}
    return {"name": name, "imagePullPolicy": "never",
            "config": {"image": image, "createOptions": {"Cmd": ["sleep", "3600"],
                                                         "HostConfig": {"NetworkMode": "none"}}}}


async def _deploy(run_dir: Path, first: int, count: int, image: str | None) -> list[float]:
    mgmt = ManagementClient(run_dir / "mgmt" / "mgmt.sock")
    times: list[float] = []
    try:
        for i in range(first, first + count):
            name = f"m{i:03d}"
            t = time.perf_counter()
            await mgmt.create_module(_spec(name, image))
            await mgmt.action(name, "start")
            while (await mgmt.get_module(name))["status"]["runtimeStatus"]["status"] != "running":
                await asyncio.sleep(0.005)
            times.append(time.perf_counter() - t)
    finally:
        await mgmt.close()
    return times


def run(modules_timed: int = 20, modules_total: int = 50, engine: str = "process", docker_uri: str | None = None,
        image: str | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.chmod(tmp, 0o755)
        state = tmp / "state"
        config = tmp / "config.toml"
        # Host modules run as root here, which only allow_elevated_docker_permissions allows (containers are vetted
        # as on a default device).
        config.write_text(('allow_elevated_docker_permissions = true\n' if engine == "process" else "")
                          + f'[edgeward.runtime]\nengine = "{engine}"\n'
                          + (f'[moby_runtime]\nuri = "{docker_uri}"\n' if docker_uri else ""))
        with running_daemon(["run", "-c", str(config), "--state-dir", str(state), "--run-dir", str(state / "run")],
                            log_path=tmp / "daemon.log") as proc:
            rss_idle = rss_mb(proc.pid)
            times = asyncio.run(_deploy(state / "run", 0, modules_timed, image))
            asyncio.run(_deploy(state / "run", modules_timed, modules_total - modules_timed, image))
            rss_loaded = rss_mb(proc.pid)
    return {"engine": engine, "modules_timed": modules_timed, "total_s": sum(times),
            "p50_ms": statistics.median(times) * 1000, "max_ms": max(times) * 1000,
            "rss_idle_mb": rss_idle, "modules_total": modules_total, "rss_loaded_mb": rss_loaded}
