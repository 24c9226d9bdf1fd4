"""What one new connection may cost the daemon, whatever the caller does (session-13 review, brk13b):

- a caller at the bottom of a deep ppid chain: its attestation reads a bounded number of /proc files (a 3000-deep
  chain made every new connection walk it, one read a level, on the event loop), and past the bound it is placed
  in no module (fail closed), unless the module's cgroup says it is the module's;
- a module's processes that called once and stay alive: their pins go when their connections close (the daemon
  held a pidfd for each, and checked them all before every new pin).

Counted in /proc opens and pins, not in time, so a loaded machine cannot make them flake.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from edgeward.attest.pin import ProcessPins
from edgeward.attest.pipeline import Attestor
from edgeward.http.peercred import Caller
from edgeward.runtime.engines.proccgroup import cgroup2_mount
from edgeward.runtime.engines.process import ProcessEngine
from edgeward.runtime.engines.procfs import ATTRIBUTION_DEPTH
from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.runtime.registry import Registry
from tests.fixtures.modules import module_results
from tests.fixtures.runtime import RuntimeEnv, serve_runtime
from tests.integration.test_accept_attestation import start_chain

pytestmark = pytest.mark.asyncio(loop_scope="session")

CGROUPS = os.geteuid() == 0 and cgroup2_mount() is not None



@contextmanager
def proc_opens() -> Iterator[list[str]]:
    """Every /proc file this process opens meanwhile."""
    seen: list[str] = []
    real = builtins.open

    def counting(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, str) and file.startswith("/proc/"):
            seen.append(file)
        return real(file, *args, **kwargs)

    builtins.open = counting
    try:
        yield seen
    finally:
        builtins.open = real


@pytest.mark.parametrize("cgroups", [False, pytest.param(True, marks=pytest.mark.skipif(
    not CGROUPS, reason="module cgroups need root and a cgroup v2 hierarchy"))])
async def test_a_deep_caller_costs_a_bounded_number_of_reads(tmp_path: Path, cgroups: bool) -> None:
    engine = ProcessEngine(tmp_path / "state", stop_timeout=2.0, allow_elevated=True, cgroups=cgroups)
    registry = Registry(tmp_path / "home")
    out = tmp_path / "chain.json"
    try:
        chain = await start_chain(engine, registry, 2 * ATTRIBUTION_DEPTH, out, timeout=30)
        attestor = Attestor(engine, registry)

        async def attest(pid: int) -> tuple[str | None, int]:
            with proc_opens() as opened:
                got = await attestor._run(Caller(pid, 0, 0))
            return (got.registration.name if got.registration is not None else None), len(opened)

        assert (await attest(chain[1]))[0] == "m"  # a module's caller a level below its main process
        near, _ = await attest(chain[ATTRIBUTION_DEPTH - 1])
        deep, reads = await attest(chain[-1])
        assert near == "m"
        if cgroups:
            # In the module's cgroup, however deep: the module's own process, placed in a few reads.
            assert deep == "m"
            assert reads <= 8, reads
        else:
            # Past the bound of the ppid walk: no module's (here a root host process), after a bounded walk.
            assert deep is None
            assert reads <= ATTRIBUTION_DEPTH + 8, reads
        host, host_reads = await attest(os.getpid())  # a host process outside every module
        assert host is None and host_reads <= ATTRIBUTION_DEPTH + 8
    finally:
        await engine.close()
        registry.close()


async def test_a_new_pin_does_not_check_the_others() -> None:
    """Pinning one more process costs the same however many are pinned: no pass over the others."""
    pins = ProcessPins()
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(50)]
    try:
        held = [pins.pin(p.pid) for p in sleepers[:-1]]
        checked = 0
        alive = type(held[0]).alive

        def counting(self: Any) -> bool:
            nonlocal checked
            checked += 1
            return alive(self)

        type(held[0]).alive = counting  # type: ignore[method-assign]
        try:
            pins.pin(sleepers[-1].pid)
        finally:
            type(held[0]).alive = alive  # type: ignore[method-assign]
        assert checked <= 1, checked
    finally:
        for p in sleepers:
            p.kill()
            p.wait()


# The module forks N children; each calls the workload API once on a connection of its own, closes it, tells its
# parent and stays alive. Then the module prints DONE.
PINNER = textwrap.dedent("""
    import os, socket, sys, time
    path = os.environ["IOTEDGE_WORKLOADURI"][len("unix://"):]
    req = b"GET /trust-bundle?api-version=2019-01-30 HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n"
    ok = 0
    for _ in range(int(os.environ["N"])):
        r, w = os.pipe()
        if os.fork() == 0:
            os.close(r)
            s = socket.socket(socket.AF_UNIX); s.connect(path); s.sendall(req)
            got = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                got += b
            s.close()
            os.write(w, b"y" if b" 200 " in got[:20] else b"n")
            time.sleep(3600)
            os._exit(0)
        os.close(w)
        ok += os.read(r, 1) == b"y"
        os.close(r)
    print(f"PINNED {ok}", flush=True)
    print("DONE", flush=True)
    time.sleep(3600)
""")


def _fds() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


@pytest.fixture
async def rt(request: pytest.FixtureRequest, public_dir: Path) -> AsyncIterator[RuntimeEnv]:
    engine = ProcessEngine(public_dir / "state" / "runtime" / "processes", stop_timeout=2.0, allow_elevated=True)
    async with serve_runtime(request, public_dir, engine, {"hostname": "edge1"}) as env:
        yield env


async def test_pins_go_with_their_connections(rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    n = 150
    pins = rt.parts.attestor.pins
    before_fds = _fds()
    await mgmt.create_module({"name": "pinner", "type": "docker", "imagePullPolicy": "never",
                              "config": {"settings": {"image": sys.executable,
                                                      "createOptions": {"Cmd": ["-c", PINNER]}},
                                         "env": [{"key": "N", "value": str(n)}]}})
    await mgmt.action("pinner", "start")
    await module_results(rt.parts.engine, "pinner", timeout=120)
    logs = b""
    async for chunk in mgmt.logs("pinner"):
        logs += chunk.data
    assert f"PINNED {n}".encode() in logs, logs[-300:]
    # Their connections are closed: within a few turns of the loop, their pins (and descriptors) are gone.
    deadline = time.monotonic() + 10
    while len(pins) > 5 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert len(pins) <= 5, len(pins)
    assert _fds() - before_fds < n // 4
    await mgmt.action("pinner", "stop")
