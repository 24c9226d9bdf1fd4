"""`python -m benchmarks` (what `make bench` runs) leaves nothing running: not the daemon, not the workload
benchmark's load generator (a module of that daemon), not swtpm — when it ends, and when it is stopped by SIGTERM
while the load generator runs. Everything it starts is watched by pid: its process tree, and whatever names its
temporary directory (swtpm double-forks out of the tree)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.trees import environ, kill_all, running, still_running, watch_naming, watch_tree

REPO = Path(__file__).resolve().parents[2]


def _load_module_runs(seen: dict[int, int]) -> bool:
    return any(b"IOTEDGE_MODULEID=bench\0" in environ(pid) for pid, start in seen.items() if running(pid, start))


@pytest.mark.parametrize("interrupt", [True, False], ids=["sigterm-while-the-load-module-runs", "normal-end"])
def test_workload_benchmark_leaves_nothing_running(public_dir: Path, interrupt: bool) -> None:
    tmp = public_dir / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp),
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = public_dir / "bench.out"
    seen: dict[int, int] = {}
    try:
        with out.open("wb") as sink:
            bench = subprocess.Popen([sys.executable, "-m", "benchmarks", "--only", "workload", "--seconds",
                                      "1" if interrupt else "0.2"], cwd=REPO, env=env, stdout=sink,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        signalled = False
        while bench.poll() is None and time.monotonic() < deadline:
            watch_tree(bench.pid, seen)
            watch_naming(tmp, seen)
            if interrupt and not signalled and _load_module_runs(seen):
                os.kill(bench.pid, signal.SIGTERM)
                signalled = True
            time.sleep(0.05)
        assert bench.poll() is not None, "the benchmark did not end"
        output = out.read_text(errors="replace")
        assert signalled == interrupt, output
        left = still_running(seen)
        assert not left, f"still running after the benchmark ended: {left}\n{output}"
        assert bench.returncode == (130 if interrupt else 0), output
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        kill_all(seen)
