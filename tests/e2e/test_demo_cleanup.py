"""`edgeward demo` leaves nothing running, however it ends: Ctrl-C (SIGINT to its process group, as a terminal
sends it), a closed terminal (SIGHUP to the group) or SIGTERM to it alone, while the daemon starts, once it is ready, or while the demo module runs; or a
normal end. Every process of its tree (the demo, the daemon, the demo module) is watched by pid and start time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.trees import cmdline, environ, kill_all, running, still_running, watch_tree

DEMO_TIMEOUT = 120.0


def _daemon_started(seen: dict[int, int], out: Path) -> bool:
    return any(b"edgeward\0run\0" in cmdline(pid) for pid in seen)


def _daemon_ready(seen: dict[int, int], out: Path) -> bool:
    return out.exists() and "is running as pid" in out.read_text(errors="replace")


def _module_running(seen: dict[int, int], out: Path) -> bool:
    return any(b"IOTEDGE_MODULEID=demo-module\0" in environ(pid) for pid in seen if running(pid, seen[pid]))


PHASES: dict[str, Callable[[dict[int, int], Path], bool]] = {
    "daemon starting": _daemon_started, "daemon ready": _daemon_ready, "module running": _module_running}


def _ctrl_c(demo: subprocess.Popen[bytes]) -> None:
    os.killpg(demo.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole foreground process group


def _hang_up(demo: subprocess.Popen[bytes]) -> None:
    os.killpg(demo.pid, signal.SIGHUP)  # the terminal closed: its session's processes get SIGHUP


def _sigterm(demo: subprocess.Popen[bytes]) -> None:
    os.kill(demo.pid, signal.SIGTERM)


def _run_demo(state: Path, phase: str | None, interrupt: Callable[[subprocess.Popen[bytes]], None] | None
              ) -> tuple[int, dict[int, int], str]:
    """Run the demo, interrupt it once `phase` is reached; its exit code, every process of its tree seen, output."""
    out = state.parent / "demo.out"
    seen: dict[int, int] = {}
    with out.open("wb") as sink:
        demo = subprocess.Popen([sys.executable, "-m", "edgeward", "demo", "--state-dir", str(state)],
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + DEMO_TIMEOUT
        interrupted = False
        while demo.poll() is None and time.monotonic() < deadline:
            watch_tree(demo.pid, seen)
            if phase is not None and interrupt is not None and not interrupted and PHASES[phase](seen, out):
                watch_tree(demo.pid, seen)
                interrupt(demo)
                interrupted = True
            time.sleep(0.02)
        assert demo.poll() is not None, "the demo did not end"
        assert phase is None or interrupted, f"the demo ended before {phase}: {out.read_text(errors='replace')}"
        return demo.returncode, seen, out.read_text(errors="replace")
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()


@pytest.mark.parametrize(("phase", "interrupt"), [
    ("daemon starting", _sigterm),
    ("daemon ready", _sigterm),
    ("daemon ready", _ctrl_c),
    ("module running", _sigterm),
    ("module running", _ctrl_c),
    ("module running", _hang_up),
    (None, None),
], ids=["sigterm-while-daemon-starts", "sigterm-once-ready", "ctrl-c-once-ready", "sigterm-while-module-runs",
        "ctrl-c-while-module-runs", "terminal-closed-while-module-runs", "normal-end"])
def test_demo_leaves_no_process_of_its_tree_running(
        public_dir: Path, phase: str | None, interrupt: Callable[[subprocess.Popen[bytes]], None] | None) -> None:
    seen: dict[int, int] = {}
    try:
        code, seen, output = _run_demo(public_dir / "demo", phase, interrupt)
        left = still_running(seen)
        assert not left, f"still running after the demo ended: {left}\n{output}"
        assert code == (0 if phase is None else 130), output  # 130: interrupted, as a shell reports Ctrl-C
    finally:
        kill_all(seen)  # never leave them running, even when the test fails
