"""A host module's executable replaced by a FIFO, over the real process engine and measure() on the event loop, as
the integrity monitor and attestation call it (h/brk14b finding 1): the module exits leaving a FIFO where its
executable was, or re-points the `current` release symlink it owns at a FIFO while it runs. Before the fix the
measurement opened the FIFO on the event loop and waited for a writer: every service of the daemon stopped."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from edgeward.attest.measure import Measurement, measure
from edgeward.runtime.engine import ModuleSpec
from edgeward.runtime.engines.process import ProcessEngine
from edgeward.runtime.registry import Registration
from tests.fixtures.unmeasurable import released_after

SCRIPT = b"#!/bin/sh\nexec sleep 60\n"


def _engine(base: Path) -> ProcessEngine:
    return ProcessEngine(base / "state", stop_timeout=2.0, backoff_base=0.05, backoff_cap=0.5, allow_elevated=True)


async def _measured_at_once(engine: ProcessEngine, reg: Registration, fifo: Path) -> Measurement:
    """measure() on this loop; a writer lets a blocked open go after 3 s, so a blocking measurement fails the test
    rather than hanging it. The loop itself must have stayed free: a ticker on it counts."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        with released_after(fifo, 3.0) as released:
            started = time.monotonic()
            result = await measure(engine, reg)
            took = time.monotonic() - started
            await asyncio.sleep(0.3)
    finally:
        ticker.cancel()
    assert not released, f"measure() blocked on the FIFO (let go by a writer after {took:.1f} s)"
    assert took < 1.0 and ticks >= 3, (took, ticks)
    return result


async def test_a_stopped_module_whose_executable_became_a_fifo_is_a_finding_at_once(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    app = tmp_path / "app"
    app.mkdir()
    exe = app / "mod.sh"
    exe.write_bytes(SCRIPT)
    exe.chmod(0o755)
    try:
        status = await engine.create(ModuleSpec("fifo", str(exe)))
        reg = Registration("fifo", "process", status.engine_id, str(exe), status.image_id, "gen1")
        assert (await measure(engine, reg)).ok
        exe.rename(app / "mod.sh.old")  # what the module's uid does to its own directory, then exits
        os.mkfifo(exe, 0o644)
        result = await _measured_at_once(engine, reg, exe)
        assert not result.ok and result.kind == "binary_changed", result
        assert "not a regular file" in (result.finding or ""), result
    finally:
        await engine.close()


async def test_a_running_module_whose_release_symlink_now_names_a_fifo_is_a_finding_at_once(tmp_path: Path) -> None:
    """The launch pin (the inode that was started) is unchanged: the finding comes from the path's measurement."""
    engine = _engine(tmp_path)
    app = tmp_path / "app"
    (app / "v1").mkdir(parents=True)
    (app / "v2").mkdir()
    (app / "v1" / "mod.sh").write_bytes(SCRIPT)
    (app / "v1" / "mod.sh").chmod(0o755)
    (app / "current").symlink_to("v1")
    image = app / "current" / "mod.sh"
    try:
        status = await engine.create(ModuleSpec("fifol", str(image)))
        reg = Registration("fifol", "process", status.engine_id, str(image), status.image_id, "gen1")
        await engine.start("fifol")
        assert (await measure(engine, reg)).ok
        os.mkfifo(app / "v2" / "mod.sh", 0o644)
        (app / "current.new").symlink_to("v2")
        (app / "current.new").replace(app / "current")
        result = await _measured_at_once(engine, reg, app / "v2" / "mod.sh")
        assert not result.ok and result.kind == "binary_changed", result
        assert "not a regular file" in (result.finding or ""), result
    finally:
        await engine.close()
