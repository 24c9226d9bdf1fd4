"""The CLI against a real daemon over its sockets: list, logs, restart, check, system status, support-bundle
(redacted), audit verify (and tamper detection), version, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.supervise import running_daemon
from tests.fixtures.modules import elevated_defaults, logs_until

EDGEWARD = [sys.executable, "-m", "edgeward"]

# A module that leaks secrets into its logs, as careless modules do: the support bundle must not carry them.
LEAKY = textwrap.dedent("""
    import time
    print("connecting with HostName=hub;DeviceId=d;SharedAccessKey=c2VjcmV0c2VjcmV0", flush=True)
    print("-----BEGIN PRIVATE KEY-----\\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\\n-----END PRIVATE KEY-----", flush=True)
    print("ready", flush=True)
    time.sleep(3600)
""")


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    base = tmp_path_factory.mktemp("cli")
    os.chmod(base, 0o755)
    state, run = base / "state", base / "run"
    # The embedded defaults, with root host modules allowed: the leaky module runs as the test's user, root.
    with running_daemon(["run", "-c", str(elevated_defaults(base)), "--state-dir", str(state), "--run-dir", str(run)],
                        log_path=base / "daemon.log"):
        yield {"state": state, "run": run, "base": base}


def cli(device: dict[str, Path], *args: str, state: bool = False) -> subprocess.CompletedProcess[str]:
    extra = ["--run-dir", str(device["run"])] + (["--state-dir", str(device["state"])] if state else [])
    return subprocess.run([*EDGEWARD, *args, *extra], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200"})


def _deploy(device: dict[str, Path]) -> None:
    async def go() -> None:
        mgmt = ManagementClient(device["run"] / "mgmt" / "mgmt.sock")
        try:
            await mgmt.create_module({"name": "leaky", "imagePullPolicy": "never", "config": {
                "image": sys.executable, "createOptions": {"Cmd": ["-c", LEAKY]}}})
            await mgmt.action("leaky", "start")
            await logs_until(mgmt, "leaky", b"ready")
        finally:
            await mgmt.close()

    asyncio.run(go())


def test_list_logs_restart(device: dict[str, Path]) -> None:
    _deploy(device)
    listed = cli(device, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (module,) = json.loads(listed.stdout)
    assert module["name"] == "leaky" and module["status"]["runtimeStatus"]["status"] == "running"
    logs = cli(device, "logs", "leaky", "--tail", "1")
    assert logs.returncode == 0 and logs.stdout.strip() == "ready"
    restarted = cli(device, "restart", "leaky")
    assert restarted.returncode == 0 and "restarted leaky" in restarted.stdout
    missing = cli(device, "logs", "nosuchmodule")
    assert missing.returncode == 1 and "nosuchmodule" in missing.stderr and "Traceback" not in missing.stderr


def test_check_and_status(device: dict[str, Path]) -> None:
    checked = cli(device, "check", "--json", state=True)
    assert checked.returncode == 0, checked.stdout
    names = {r["name"]: r["outcome"] for r in json.loads(checked.stdout)}
    assert names["keys service"] == names["management API"] == names["cert aziot-edged-ca"] == "ok"
    status = cli(device, "system", "status", "--json", state=True)
    assert status.returncode == 0
    doc = json.loads(status.stdout)
    assert doc["audit"][0] is True and {c["id"] for c in doc["certs"]} >= {"aziot-edged-ca"}


def test_support_bundle_is_redacted(device: dict[str, Path]) -> None:
    _deploy_if_missing(device)
    out = device["base"] / "bundle.zip"
    made = cli(device, "support-bundle", "-o", str(out), state=True)
    assert made.returncode == 0, made.stderr
    assert out.stat().st_mode & 0o077 == 0
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        assert {"systeminfo.json", "modules.json", "status.json", "logs/leaky.log"} <= names
        everything = b"".join(z.read(n) for n in names)
    assert b"c2VjcmV0c2VjcmV0" not in everything and b"BEGIN PRIVATE KEY" not in everything
    assert b"<redacted>" in everything


def _deploy_if_missing(device: dict[str, Path]) -> None:
    if "leaky" not in cli(device, "list", "--json").stdout:
        _deploy(device)


def test_audit_verify_detects_tampering_and_version(device: dict[str, Path]) -> None:
    ok = subprocess.run([*EDGEWARD, "audit", "verify", "--state-dir", str(device["state"])], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0 and "intact" in ok.stdout
    db = sqlite3.connect(device["state"] / "audit" / "audit.db", isolation_level=None)
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET module='someone-else' WHERE seq=1")
    db.close()
    bad = subprocess.run([*EDGEWARD, "audit", "verify", "--state-dir", str(device["state"])], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1 and "TAMPERED" in bad.stderr and "record 1" in bad.stderr
    version = subprocess.run([*EDGEWARD, "version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("edgeward ")


def test_unreachable_daemon_is_a_clear_error(tmp_path: Path) -> None:
    listed = subprocess.run([*EDGEWARD, "list", "--run-dir", str(tmp_path)], capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 5 and "is it running?" in listed.stderr and "Traceback" not in listed.stderr


def test_a_bad_connection_limit_is_one_clear_line_not_a_traceback(tmp_path: Path) -> None:
    done = subprocess.run([*EDGEWARD, "run", "--state-dir", str(tmp_path / "s"), "--run-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "EDGEWARD_HTTP_BODY_TIMEOUT": "abc"})
    assert done.returncode == 3, done.stderr
    assert "EDGEWARD_HTTP_BODY_TIMEOUT='abc'" in done.stderr and "Traceback" not in done.stderr


def test_support_bundle_and_logs_take_every_since_form(device: dict[str, Path]) -> None:
    """`--since` reaches the daemon intact: a duration with spaces, and an RFC 3339 offset whose `+` an unencoded
    query turned into a space (a 400 before)."""
    _deploy_if_missing(device)
    out = device["base"] / "bundle-since.zip"
    made = cli(device, "support-bundle", "-o", str(out), "--since", "2 days 3 hours", state=True)
    assert made.returncode == 0, made.stderr
    with zipfile.ZipFile(out) as z:
        assert "logs/leaky.log" in z.namelist()
    made = cli(device, "support-bundle", "-o", str(out), "--since", "2020-01-01T00:00:00+01:00", state=True)
    assert made.returncode == 0, made.stderr
    logs = cli(device, "logs", "leaky", "--since", "2 days 3 hours")
    assert logs.returncode == 0, logs.stderr
    bad = cli(device, "support-bundle", "-o", str(out), "--since", "2 fortnights", state=True)
    assert bad.returncode != 0 and "since" in (bad.stderr + bad.stdout) and "Traceback" not in bad.stderr
