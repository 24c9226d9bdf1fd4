"""Attestation at accept (the workload sockets' connection caps) on a real process engine: a host-process module's
processes are placed in the module from its first connection on, by its cgroup where modules have one, else by
their ppid chain within a bounded walk; nobody else is (fail closed)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgeward.attest.accept import AcceptAttestor
from edgeward.http.callers import Peer
from edgeward.http.peercred import Caller
from edgeward.runtime.engine import ModuleSpec
from edgeward.runtime.engines.proccgroup import cgroup2_mount
from edgeward.runtime.engines.process import ProcessEngine
from edgeward.runtime.registry import Registration, Registry

pytestmark = pytest.mark.asyncio(loop_scope="session")

# The module's main process forks a chain DEPTH deep; the last one writes the chain's pids, main first.
CHAIN = textwrap.dedent("""
    import json, os, time
    chain = [os.getpid()]
    for _ in range(int(os.environ["DEPTH"])):
        if os.fork():
            time.sleep(3600)
            os._exit(0)
        chain.append(os.getpid())
    with open(os.environ["OUT"] + ".tmp", "w") as f:
        json.dump(chain, f)
    os.rename(os.environ["OUT"] + ".tmp", os.environ["OUT"])
    time.sleep(3600)
""")


async def start_chain(engine: ProcessEngine, registry: Registry, depth: int, out: Path,
                      timeout: float = 20) -> list[int]:
    """Module "m" (registered as running) whose main process forks a chain ``depth`` deep; the chain's pids, main
    first, once its last process wrote them."""
    status = await engine.create(ModuleSpec(name="m", image=sys.executable, env={"DEPTH": str(depth), "OUT": str(out)},
                                            create_options={"Cmd": ["-c", CHAIN]}))
    registry.put(Registration("m", "process", status.engine_id, sys.executable, status.image_id, "g1",
                              state="running"))
    await engine.start("m")
    deadline = time.monotonic() + timeout
    while not out.exists():
        assert time.monotonic() < deadline, "the module's chain did not start"
        await asyncio.sleep(0.05)
    chain: list[int] = json.loads(out.read_text())
    return chain


@pytest.mark.parametrize("cgroups", [False, pytest.param(True, marks=pytest.mark.skipif(
    os.geteuid() != 0 or cgroup2_mount() is None, reason="module cgroups need root and a cgroup v2 hierarchy"))])
async def test_a_modules_processes_are_placed_in_it_within_a_bounded_walk_and_nobody_else_is(tmp_path: Path,
                                                                                            cgroups: bool) -> None:
    engine = ProcessEngine(tmp_path / "state", stop_timeout=2.0, allow_elevated=True,  # its modules run as root
                           cgroups=cgroups)
    registry = Registry(tmp_path / "home")
    out = tmp_path / "chain.json"
    try:
        chain = await start_chain(engine, registry, AcceptAttestor.MAX_DEPTH + 4, out)
        sockets = {"own": "m", "another": "n"}  # a module's own socket; anything else is the shared one
        attestor = AcceptAttestor(engine, registry, lambda sockname: sockets.get(sockname or ""))

        def placed(pid: int, sockname: str = "own") -> str | None:
            return attestor.module_of(Peer(sockname, Caller(pid, 0, 0)))

        assert placed(chain[1]) == "m"  # on its first connection: the engine's processes are read as they are now
        assert placed(chain[0]) == "m"  # its main process
        assert placed(chain[1], "shared") == "m"  # any module may call on the shared socket
        assert placed(chain[1], "another") is None  # not on another module's socket
        assert placed(chain[AcceptAttestor.MAX_DEPTH - 1]) == "m"
        if cgroups:
            # In the module's cgroup, however deep: the cgroup says so in one read, with no walk.
            assert placed(chain[-1]) == "m"
        else:
            # A walk reads at most MAX_DEPTH processes: the deepest caller placed is MAX_DEPTH - 1 below the main
            # one; below that, a caller counts as a stranger, whatever it descends from.
            assert placed(chain[AcceptAttestor.MAX_DEPTH]) is None
            assert placed(chain[-1]) is None
        assert placed(os.getpid()) is None  # a host process outside the module
        assert placed(0) is None  # no kernel-vouched peer
        # A process the engine runs for no registered module (Edgeward did not create it) is no module either.
        await engine.create(ModuleSpec(name="unregistered", image=sys.executable,
                                       create_options={"Cmd": ["-c", "import time; time.sleep(3600)"]}))
        await engine.start("unregistered")
        assert placed((await engine.inspect("unregistered")).pid or 0) is None
    finally:
        await engine.close()
        registry.close()
