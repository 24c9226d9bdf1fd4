"""The CLI against a real daemon over its sockets: list, logs, restart, check, system status, support-bundle
(redacted), audit verify (and tamper detection), version, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    print('{"SharedAccessKey": "LEAK2bbbb=", "primaryKey": "LEAK4dddd="}', flush=True)
    print("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=LEAK3ccc==;EndpointSuffix=core.windows.net")
    print("Authorization: Bearer LEAK5eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig")
    print('identity_pk = "pkcs11:token=edge;object=device-id?pin-value=LEAK11"')
    print('password: "LEAK12 with spaces"')
    print("ready", flush=True)
    time.sleep(3600)
""")
# ... and a deployment that sets secrets in its Env (modules.json carries createOptions)
LEAKY_ENV = ["STORAGE=DefaultEndpointsProtocol=https;AccountName=a;AccountKey=LEAKENV1xxxxxxxx==",
             "AZURE_CLIENT_SECRET=LEAKENV2yyyy", "REGISTRY_PASSWORD=LEAKENV3", "LOG_LEVEL=debug"]


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
                "image": sys.executable, "createOptions": {"Cmd": ["-c", LEAKY], "Env": LEAKY_ENV}}})
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
        modules = json.loads(z.read("modules.json"))  # still JSON: only values are replaced
    assert b"c2VjcmV0c2VjcmV0" not in everything and b"BEGIN PRIVATE KEY" not in everything
    assert b"<redacted>" in everything
    assert b"LEAK" not in everything  # brk14b bundle_redaction_gaps: JSON keys, AccountKey, Env, pin-value, ...
    assert "LOG_LEVEL=debug" in json.dumps(modules) and b"AZURE_CLIENT_SECRET=<redacted>" in everything


def _deploy_if_missing(device: dict[str, Path]) -> None:
    if "leaky" not in cli(device, "list", "--json").stdout:
        _deploy(device)


def test_keylime_policy_refuses_a_planted_output_name(device: dict[str, Path]) -> None:
    victim = device["base"] / "victim-policy"
    victim.write_bytes(b"precious")
    link = device["base"] / "policy-link.json"
    link.symlink_to(victim)
    args = ["attest", "keylime-policy", "--state-dir", str(device["state"]), "--run-dir", str(device["run"])]
    refused = subprocess.run([*EDGEWARD, *args, "-o", str(link)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "symbolic link" in refused.stderr, refused.stderr
    assert victim.read_bytes() == b"precious"
    written = subprocess.run([*EDGEWARD, *args, "-o", str(device["base"] / "policy.json")], capture_output=True,
                             text=True, timeout=60)
    assert written.returncode == 0, written.stderr
    assert json.loads((device["base"] / "policy.json").read_text())["digests"]


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


def _mgmt(device: dict[str, Path], op: str, *args: Any) -> None:
    async def go() -> None:
        mgmt = ManagementClient(device["run"] / "mgmt" / "mgmt.sock")
        try:
            await getattr(mgmt, op)(*args)
        finally:
            await mgmt.close()

    asyncio.run(go())


ESCAPES = "\x1b]0;PWNED\x1b\\\x1b[1A\x1b[2K"
FORGED = "[bold green]fake-ok[/bold green]"


def test_hostile_image_paths_are_shown_not_obeyed_in_list_and_status(device: dict[str, Path]) -> None:
    """brk14b list_markup_escapes: a deployment's image path reached root's terminal as escape sequences and rich
    markup (forged rows), and an unbalanced closing tag made `list` and `system status` die with a MarkupError."""
    images = {}
    for name, directory in (("mkesc", f"{ESCAPES}{FORGED}"), ("mkbad", "q[/blink]")):
        d = device["base"] / "hostile" / directory
        d.mkdir(parents=True)
        shutil.copy("/bin/sleep", d / "s")
        images[name] = str(d / "s")
        _mgmt(device, "create_module", {"name": name, "imagePullPolicy": "never",
                                        "config": {"image": images[name], "createOptions": {"Cmd": ["300"]}}})
    try:
        for args, state in ((("list",), False), (("system", "status"), True)):
            shown = cli(device, *args, state=state)
            assert "Traceback" not in shown.stderr and "MarkupError" not in shown.stderr, shown.stderr
            assert shown.returncode in (0, 1) and "mkesc" in shown.stdout and "mkbad" in shown.stdout
            assert "\x1b" not in shown.stdout and "\\x1b]0;PWNED" in shown.stdout
            assert FORGED in shown.stdout and "q[/blink]/s" in shown.stdout  # shown as typed, not rendered
        listed = {m["name"]: m for m in json.loads(cli(device, "list", "--json").stdout)}
        assert {n: listed[n]["config"]["settings"]["image"] for n in images} == images  # JSON stays exact
    finally:
        for name in images:
            _mgmt(device, "delete_module", name)


def test_support_bundle_refuses_a_planted_output_name(device: dict[str, Path]) -> None:
    """brk14b support_bundle_symlink: root's bundle went through a symlink a user planted under the output name
    (overwriting the file it named) and into a 0666 file a user planted there (who then read it)."""
    home = device["base"] / "home"
    home.mkdir()
    victim = device["base"] / "victim"
    victim.write_bytes(b"root-only precious content\n")
    victim.chmod(0o600)
    out = home / "support_bundle.zip"
    out.symlink_to(victim)
    made = subprocess.run([*EDGEWARD, "support-bundle", "--run-dir", str(device["run"]), "--state-dir",
                           str(device["state"])], cwd=home, capture_output=True, text=True, timeout=60)
    assert made.returncode == 1 and "symbolic link" in made.stderr and "Traceback" not in made.stderr
    assert victim.read_bytes() == b"root-only precious content\n" and out.is_symlink()
    out.unlink()
    out.write_bytes(b"")
    out.chmod(0o666)
    os.chown(out, 65534, 65534)
    made = cli(device, "support-bundle", "-o", str(out), state=True)
    assert made.returncode == 1 and "belongs to uid 65534" in made.stderr
    assert out.stat().st_size == 0 and out.stat().st_uid == 65534
    out.unlink()
    out.write_bytes(b"an old bundle of mine")
    out.chmod(0o644)
    made = cli(device, "support-bundle", "-o", str(out), state=True)
    assert made.returncode == 0, made.stderr
    assert zipfile.is_zipfile(out) and out.stat().st_mode & 0o077 == 0
