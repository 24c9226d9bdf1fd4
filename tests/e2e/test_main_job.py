"""The README's first command, as a newcomer runs it: `edgeward demo` on embedded defaults, twice (the second run
reuses the state of the first)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EDGEWARD = [sys.executable, "-m", "edgeward"]


def test_demo_runs_a_module_through_the_workload_api_and_shows_status(public_dir: Path) -> None:
    state = public_dir / "demo-state"
    env = {**os.environ, "COLUMNS": "200"}
    for _ in range(2):
        run = subprocess.run([*EDGEWARD, "demo", "--state-dir", str(state)], capture_output=True, text=True,
                             timeout=120, env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        out = run.stdout
        for expected in ("chains to the trust bundle", "signature verifies with the module key",
                         "CN=demo-host-agent.edgeward-device.edgeward.local", "demo-module", "running",
                         "aziot-edged-ca", "audit log: intact"):
            assert expected in out, f"{expected!r} missing from:\n{out}"
        assert "failed" not in out and "untrusted" not in out
    verify = subprocess.run([*EDGEWARD, "audit", "verify", "--state-dir", str(state)], capture_output=True,
                            text=True, timeout=60)
    assert verify.returncode == 0 and "intact" in verify.stdout
