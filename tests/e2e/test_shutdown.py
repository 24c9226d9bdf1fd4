"""A stopped daemon leaves nothing running: its host-process modules stop with it, even when a client followed a
module's logs and left (that request never ends on its own, and used to hold the stop past any supervisor's kill,
so the modules outlived the daemon)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeward.runtime.engines.procfs import read_stat, send_signal
from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.supervise import running_daemon, start_daemon, stop_daemon
from tests.fixtures.modules import ELEVATED, client_spec, elevated_defaults, logs_until

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _processes_of(run_dir: Path) -> list[int]:
    """Live processes whose environment names a workload socket under `run_dir`: the daemon's modules."""
    marker = f"IOTEDGE_WORKLOADURI=unix://{run_dir}/".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes() and (entry / "stat").read_text().split(") ")[-1][0] != "Z":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


async def test_sigterm_stops_the_modules_and_ends_log_followers_without_a_traceback(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    with running_daemon(["run", "-c", str(elevated_defaults(tmp_path)), "--state-dir", str(tmp_path / "s"),
                         "--run-dir", str(tmp_path / "r")], log_path=log) as proc:
        mgmt = ManagementClient(tmp_path / "r" / "mgmt" / "mgmt.sock")
        try:
            await mgmt.create_module(client_spec("lingering", []))
            await mgmt.action("lingering", "start")
            await logs_until(mgmt, "lingering", b"DONE")  # follows the logs, then leaves
            assert _processes_of(tmp_path / "r")
        finally:
            await mgmt.close()
        started = time.monotonic()
    assert proc.returncode == 0 and time.monotonic() - started < 10
    assert "Traceback" not in log.read_text()
    deadline = time.monotonic() + 5
    while _processes_of(tmp_path / "r") and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    left = _processes_of(tmp_path / "r")
    for pid in left:  # never leave them running, even when the test fails
        os.kill(pid, 9)
    assert not left, "the module outlived the daemon"


async def test_sigterm_while_the_daemon_starts_stops_the_agent_it_already_started(tmp_path: Path) -> None:
    """The agent is started before the daemon says it is ready; a SIGTERM in that window used to end the daemon on
    the spot (default action) and leave the agent running with no supervisor."""
    config = tmp_path / "config.toml"
    config.write_text(f'{ELEVATED}[agent]\nname = "edgeAgent"\nimagePullPolicy = "never"\n[agent.config]\n'
                      f'image = "{sys.executable}"\ncreateOptions = {{ Cmd = ["-c", "import time; time.sleep(300)"] }}\n')
    run = tmp_path / "r"
    log = tmp_path / "daemon.log"
    seen: dict[int, int] = {}
    with log.open("wb") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "edgeward", "run", "-c", str(config), "--state-dir",
                                   str(tmp_path / "s"), "--run-dir", str(run)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (agent := _processes_of(run)) and daemon.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        assert agent, log.read_text()
        os.kill(daemon.pid, signal.SIGTERM)
        for pid in agent:
            st = read_stat(pid)
            if st is not None:
                seen[pid] = st.start_time
        during_start = "edgeward ready" not in log.read_text()
        assert await asyncio.to_thread(daemon.wait, 30) == 0, log.read_text()
        deadline = time.monotonic() + 5
        while _processes_of(run) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not _processes_of(run), f"the agent outlived the daemon (signalled during start: {during_start})"
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        for pid, start in seen.items():
            send_signal(pid, start, signal.SIGKILL)


async def test_a_closed_terminal_sighup_stops_edgeward_run_and_its_modules(tmp_path: Path) -> None:
    """`edgeward run` in a terminal gets SIGHUP when the terminal closes; it stops as on SIGTERM (the default
    action would end it on the spot and leave its host-process modules running)."""
    log = tmp_path / "daemon.log"
    daemon = await asyncio.to_thread(start_daemon, ["run", "-c", str(elevated_defaults(tmp_path)), "--state-dir",
                                                     str(tmp_path / "s"), "--run-dir", str(tmp_path / "r")],
                                     None, 60.0, log)
    seen: dict[int, int] = {}
    try:
        mgmt = ManagementClient(tmp_path / "r" / "mgmt" / "mgmt.sock")
        try:
            await mgmt.create_module(client_spec("hungup", []))
            await mgmt.action("hungup", "start")
            await logs_until(mgmt, "hungup", b"DONE")
        finally:
            await mgmt.close()
        for pid in _processes_of(tmp_path / "r"):
            st = read_stat(pid)
            if st is not None:
                seen[pid] = st.start_time
        assert seen
        os.kill(daemon.pid, signal.SIGHUP)
        assert await asyncio.to_thread(daemon.wait, 30) == 0, log.read_text()
        deadline = time.monotonic() + 5
        while _processes_of(tmp_path / "r") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not _processes_of(tmp_path / "r"), "the module outlived the daemon"
    finally:
        await asyncio.to_thread(stop_daemon, daemon)
        for pid, start in seen.items():
            send_signal(pid, start, signal.SIGKILL)
