"""The session-end check (`tests/fixtures/leftovers.py`) finds what a test suite forgot — an orphan that inherited
the session's environment (a daemon that double-forked) and one with a fresh environment that only names the
session's directory (a host-process module whose daemon died) — kills them by pid and fails the session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from edgeward.runtime.engines.procfs import read_stat

REPO = Path(__file__).resolve().parents[2]

FORGETFUL = textwrap.dedent("""
    import os, subprocess, tempfile
    def test_forgets_two_processes():
        out = os.environ["LEFTOVER_OUT"]
        subprocess.run(["sh", "-c", f"sleep 300 >/dev/null 2>&1 & echo $! > {out}/inherited.pid"], check=True)
        d = tempfile.mkdtemp(prefix="leftover-")
        subprocess.run(["env", "-i", "sh", "-c", f"cd {d} && (sleep 301 >/dev/null 2>&1 & echo $! > {out}/fresh.pid)"],
                       check=True)
""")


def _running(pid: int) -> bool:
    st = read_stat(pid)
    return st is not None and st.state not in ("Z", "X")


def test_session_end_check_kills_and_reports_orphans_the_suite_left(tmp_path: Path) -> None:
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "test_forgetful.py").write_text(FORGETFUL)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "LEFTOVER_OUT": str(out),
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    pids: list[int] = []
    try:
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                              "tests.fixtures.leftovers", "--rootdir", str(tmp_path / "suite"),
                              str(tmp_path / "suite" / "test_forgetful.py")],
                             capture_output=True, text=True, env=env, cwd=tmp_path / "suite", timeout=120)
        pids = [int((out / f"{name}.pid").read_text()) for name in ("inherited", "fresh")]
        assert run.returncode == 1, run.stdout + run.stderr
        assert "2 process(es) started by the test session still run after it" in run.stdout, run.stdout
        for pid in pids:
            assert f"pid {pid} " in run.stdout, run.stdout
        deadline = time.monotonic() + 5
        while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in pids if _running(pid)]
    finally:
        for pid in pids:
            if _running(pid) and b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
