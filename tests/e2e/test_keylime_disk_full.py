"""A4 of the break-this review: Edgeward's state file system full (a module's writable bind, an image pull, another
service's logs on the same file system), then a module's executable swapped. The integrity monitor's finding could
not be appended to the audit log, the measurement list is derived from the audit log, so PCR 10 never moved and the
verifier reported PASS for as long as the disk stayed full. Now the finding reaches PCR 10 and the list from memory:
the verifier fails the device within two quote intervals; once there is room the list is persisted, and Edgeward
restarted rebuilds it to PCR 10's value, finding included.

Against a real registrar and verifier (keylime 7.14.3) and a swtpm, with the state dir on a small tmpfs of its own
(so the test runs as root).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.supervise import start_daemon, stop_daemon
from tests.fixtures.keylime import QUOTE_INTERVAL, KeylimeServices, free_port
from tests.fixtures.swtpm import Swtpm

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs for the state dir (root only)")

AGENT_UUID = "d432fbb3-d2f1-4a97-9ef7-75bd81c0d15c"
MODULE = "sensor"
INTEGRITY_PERIOD = 1
STATE_MB = 48


@dataclass
class Device:
    base: Path
    exe: Path
    port: int
    proc: Any = None

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def common(self) -> list[str]:
        return ["-c", str(self.base / "config.toml"), "--state-dir", str(self.state), "--run-dir",
                str(self.base / "run")]

    def start(self) -> None:
        self.proc = start_daemon(["run", *self.common], env={**os.environ, "TSS2_LOG": "all+NONE"},
                                 log_path=self.base / "edgeward.log")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_daemon(proc)

    def integrity_list(self, services: KeylimeServices) -> list[str]:
        """The measurement list's paths, as the agent serves them to the verifier's client certificate."""
        ctx = ssl.create_default_context(cafile=str(self.state / "keylime" / "mtls-cert.pem"))
        ctx.check_hostname = False
        ctx.load_cert_chain(str(services.home / "cv_ca" / "client-cert.crt"),
                            str(services.home / "cv_ca" / "client-private.pem"))
        url = (f"https://127.0.0.1:{self.port}/v2.6/quotes/integrity?nonce=abcdefghij0123456789&mask=0x400"
               "&partial=1&ima_ml_entry=0")
        with urllib.request.urlopen(url, context=ctx, timeout=30) as response:
            text = json.loads(response.read())["results"]["ima_measurement_list"]
        return [line.split()[4] for line in text.splitlines()]


async def _deploy(device: Device) -> None:
    mgmt = ManagementClient(device.base / "run" / "mgmt" / "mgmt.sock")
    try:
        await mgmt.create_module({"name": MODULE, "imagePullPolicy": "never", "config": {
            "image": str(device.exe), "createOptions": {"Cmd": ["3600"]}}})
        await mgmt.action(MODULE, "start")
    finally:
        await mgmt.close()


@pytest.fixture
def device(keylime_services: KeylimeServices, tmp_path: Path) -> Iterator[Device]:
    os.chmod(tmp_path, 0o755)
    (tmp_path / "state").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={STATE_MB}m,mode=0700", "tmpfs", str(tmp_path / "state")],
                   check=True)
    tpm = Swtpm(tmp_path / "tpm" / "state")
    dev = Device(tmp_path, tmp_path / "modules" / MODULE, free_port())
    try:
        tpm.start()
        dev.exe.parent.mkdir()
        shutil.copy("/bin/sleep", dev.exe)
        dev.exe.chmod(0o755)
        (tmp_path / "config.toml").write_text(f"""hostname = "keylime-disk-full"
allow_elevated_docker_permissions = true
[tpm]
tcti = "{tpm.tcti}"
[edgeward.runtime]
engine = "process"
[edgeward.integrity]
period_seconds = {INTEGRITY_PERIOD}
[edgeward.keylime]
registrar_url = "{keylime_services.registrar_url}"
verifier_ca = "{keylime_services.ca}"
agent_uuid = "{AGENT_UUID}"
listen_port = {dev.port}
ima_securityfs = "{tmp_path / 'no-ima'}"
""")
        dev.start()
        asyncio.run(_deploy(dev))
        policy = tmp_path / "policy.json"
        made = subprocess.run([sys.executable, "-m", "edgeward", "attest", "keylime-policy", "-o", str(policy),
                               *dev.common], capture_output=True, text=True, timeout=60, check=False)
        assert made.returncode == 0, made.stderr
        added = keylime_services.tenant("-c", "add", "-u", AGENT_UUID, "--runtime-policy", str(policy))
        assert added.returncode == 0, added.stdout[-3000:] + added.stderr[-3000:]
        yield dev
    finally:
        dev.stop()
        keylime_services.tenant("-c", "delete", "-u", AGENT_UUID)
        tpm.stop()
        subprocess.run(["umount", str(tmp_path / "state")], check=False)


def _wait_for(what: str, check: Any, timeout: float) -> Any:
    """Poll the verifier (it has no event stream to wait on) until ``check()`` returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {check()}")
        time.sleep(0.2)


def _fill(path: Path) -> int:
    """Write zeros to ``path`` until its file system has no room left; returns the bytes written."""
    written = 0
    with path.open("wb") as f:
        try:
            while True:
                written += f.write(bytes(1 << 20))
                f.flush()
        except OSError as e:
            assert e.errno == 28, e  # ENOSPC
    for size in (4096, 1):  # and the last partial pages
        try:
            with path.open("ab") as f:
                while True:
                    written += f.write(bytes(size))
                    f.flush()
        except OSError:
            pass
    return written


def test_a_finding_made_while_the_state_file_system_is_full_fails_the_device(
        device: Device, keylime_services: KeylimeServices) -> None:
    status = keylime_services.agent_status

    def passing() -> Any:
        s = status(AGENT_UUID)
        return s if s["attestation_status"] == "PASS" and s["attestation_count"] > 1 else None

    _wait_for("attestations", passing, 12 * QUOTE_INTERVAL)
    filler = device.state / "filler"
    _fill(filler)
    swapped = device.exe.with_name(f"{MODULE}.new")
    swapped.write_bytes(device.exe.read_bytes() + b"\0swapped")
    swapped.chmod(0o755)
    started = time.monotonic()
    swapped.replace(device.exe)

    def failed() -> Any:
        s = status(AGENT_UUID)
        return s if s["attestation_status"] == "FAIL" else None

    failed_status = _wait_for("the verifier to fail the device", failed, 2 * QUOTE_INTERVAL + INTEGRITY_PERIOD + 2)
    took = time.monotonic() - started
    assert failed_status["last_event_id"] == "ima.validation.ima-ng.not_in_allowlist", failed_status
    daemon_log = (device.base / "edgeward.log").read_text()
    assert "database or disk is full" in daemon_log  # the audit log could not take the finding: from memory
    assert "could not take integrity.binary_changed of sensor" in daemon_log

    filler.unlink()  # room again: the list is persisted, and a restart rebuilds it to PCR 10's value
    finding = f"/edgeward/findings/binary_changed/{MODULE}"
    assert finding in device.integrity_list(keylime_services)
    device.stop()
    device.start()
    paths = device.integrity_list(keylime_services)
    assert finding in paths, paths
    print(f"\nstate file system full ({STATE_MB} MB tmpfs), module swapped -> FAIL at the verifier: {took:.2f} s")
