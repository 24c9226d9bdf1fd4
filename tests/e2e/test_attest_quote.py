"""At start, with a TPM, Edgeward extends PCR 23 with its measurement of its own code and config;
`edgeward attest quote --nonce` proves it with a TPM quote (real swtpm), and the value replays from the audit log."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeward.supervise import start_daemon, stop_daemon
from tests.fixtures.swtpm import Swtpm

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_quote_over_the_measurement_made_at_start(public_dir: Path, fresh_swtpm: Swtpm) -> None:
    config = public_dir / "config.toml"
    config.write_text(f'[tpm]\ntcti = "{fresh_swtpm.tcti}"\n')
    state, run = public_dir / "state", public_dir / "run"
    env = {**os.environ, "TSS2_LOG": "all+NONE"}
    loop = asyncio.get_running_loop()
    proc = await loop.run_in_executor(None, lambda: start_daemon(
        ["run", "-c", str(config), "--state-dir", str(state), "--run-dir", str(run)], env=env))
    try:
        nonce = os.urandom(16).hex()
        done = await loop.run_in_executor(None, lambda: subprocess.run(
            [sys.executable, "-m", "edgeward", "attest", "quote", "--nonce", nonce, "--run-dir", str(run),
             "--state-dir", str(state)], capture_output=True, text=True, timeout=60, env=env))
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert report["signature_and_nonce"] == "verified" and report["pcr_matches_last_start"] is True
        start = report["measured_at_start"]
        combined = hashlib.sha256(f"edgeward-code:{start['code']}\nedgeward-config:{start['config']}\n".encode())
        expected = hashlib.sha256(b"\0" * 32 + combined.digest()).hexdigest()  # a fresh TPM: PCR 23 was zero
        assert report["quote"]["pcr_value"] == expected and report["quote"]["nonce"] == nonce
        assert start["config"] == hashlib.sha256(config.read_bytes()).hexdigest()
        bad = await loop.run_in_executor(None, lambda: subprocess.run(
            [sys.executable, "-m", "edgeward", "attest", "quote", "--nonce", "zz", "--run-dir", str(run)],
            capture_output=True, text=True, timeout=60, env=env))
        assert bad.returncode == 2 and "hex" in bad.stderr
    finally:
        await loop.run_in_executor(None, stop_daemon, proc)
