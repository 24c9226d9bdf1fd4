"""`edgeward check` names every config key that is set but changes nothing on this device, with why, as a warning:
an operator moving an IoT Edge config here must not believe a setting is in force when it is not. Run as the
operator runs it: the CLI against a config file, next to a real daemon started from that same file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeward.supervise import running_daemon

EDGEWARD = [sys.executable, "-m", "edgeward"]

# What `edgeward run` does without a config (a local CA issuing the device's server cert), so the daemon starts.
EFFECTIVE = textwrap.dedent("""
    hostname = "checked-device"

    [cert_issuance.local_ca]
    cert = "edgeward-local-ca"
    pk = "edgeward-local-ca"
    common_name = "Edgeward local CA"
    expiry_days = 365

    [cert_issuance.edgeward-device-server]
    method = "local_ca"
    expiry_days = 30

    [localid]
    domain_name = "edgeward.local"
""")

# Keys the daemon reads but that cannot act on this device: no DPS to reprovision with, no certificate issued
# over EST, and one key IoT Edge does not have at all.
NO_EFFECT = textwrap.dedent("""
    auto_reprovisioning_mode = "AlwaysOnStartup"
    favourite_colour = "blue"
""") + EFFECTIVE + textwrap.dedent("""
    [cert_issuance.est]
    trusted_certs = []

    [cert_issuance.est.urls]
    default = "https://est.example.net/.well-known/est"
""")


def run_check(config: Path, state: Path, run: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGEWARD, "check", "--json", "-c", str(config), "--state-dir", str(state),
                           "--run-dir", str(run)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200"})


def no_effect_rows(checked: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    rows = json.loads(checked.stdout)
    return {r["name"].removeprefix("no effect: "): (r["outcome"], r["detail"]) for r in rows
            if r["name"].startswith("no effect: ")}


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    base = tmp_path_factory.mktemp("check-no-effect")
    os.chmod(base, 0o755)
    config = base / "config.toml"
    config.write_text(NO_EFFECT)
    state, run = base / "state", base / "run"
    with running_daemon(["run", "-c", str(config), "--state-dir", str(state), "--run-dir", str(run)],
                        log_path=base / "daemon.log"):
        yield {"config": config, "state": state, "run": run, "base": base}


def test_check_warns_of_each_key_without_effect_and_still_exits_0(device: dict[str, Path]) -> None:
    checked = run_check(device["config"], device["state"], device["run"])
    assert checked.returncode == 0, checked.stdout
    rows = no_effect_rows(checked)
    assert set(rows) == {"favourite_colour", "auto_reprovisioning_mode", "cert_issuance.est.trusted_certs",
                         "cert_issuance.est.urls"}
    assert all(outcome == "warning" for outcome, _ in rows.values())
    assert rows["favourite_colour"][1] == "unknown setting, ignored"
    assert "not DPS" in rows["auto_reprovisioning_mode"][1]
    assert "EST" in rows["cert_issuance.est.urls"][1]
    # the daemon is up from that same file: the services are reachable, nothing else fails
    by_name = {r["name"]: r["outcome"] for r in json.loads(checked.stdout)}
    assert by_name["identity service"] == by_name["configuration"] == "ok"


def test_check_table_shows_the_key_paths_and_why(device: dict[str, Path]) -> None:
    shown = subprocess.run([*EDGEWARD, "check", "-c", str(device["config"]), "--state-dir", str(device["state"]),
                            "--run-dir", str(device["run"])], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "COLUMNS": "250"})
    assert shown.returncode == 0
    assert "no effect: cert_issuance.est.urls" in shown.stdout and "[cert_issuance.<id>]" in shown.stdout


def test_check_says_ok_when_every_key_set_takes_effect(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(EFFECTIVE)
    rows = json.loads(run_check(config, tmp_path / "state", tmp_path / "run").stdout)
    (row,) = [r for r in rows if r["name"] == "settings without effect" or r["name"].startswith("no effect: ")]
    assert row["name"] == "settings without effect" and row["outcome"] == "ok"


def test_check_warns_of_keys_whose_condition_this_device_does_not_meet(tmp_path: Path) -> None:
    """No daemon needed for what the config alone decides (the services' rows fail; these rows do not depend on
    them): a TPM auth key index without TPM attestation, registry credentials for an agent image never pulled."""
    config = tmp_path / "config.toml"
    config.write_text(EFFECTIVE + textwrap.dedent("""
        [tpm]
        tcti = "swtpm:port=1"
        auth_key_index = "0x00_01_00"

        [moby_runtime]
        uri = "unix:///nonexistent/docker.sock"

        [agent]
        name = "edgeAgent"
        type = "docker"
        imagePullPolicy = "never"

        [agent.config]
        image = "mcr.microsoft.com/azureiotedge-agent:1.5"

        [agent.config.auth]
        serveraddress = "example.azurecr.io"
        username = "user"
        password = "secret-password"
    """))
    checked = run_check(config, tmp_path / "state", tmp_path / "run")
    rows = no_effect_rows(checked)
    assert set(rows) == {"tpm.auth_key_index", "agent.config.auth"}
    assert all(outcome == "warning" for outcome, _ in rows.values())
    assert "TPM attestation" in rows["tpm.auth_key_index"][1]
    assert '"never"' in rows["agent.config.auth"][1]
    assert "secret-password" not in checked.stdout


def test_check_says_agent_auth_has_no_effect_for_host_process_modules(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(EFFECTIVE + textwrap.dedent("""
        [agent]
        name = "edgeAgent"
        type = "docker"

        [agent.config]
        image = "/usr/bin/true"

        [agent.config.auth]
        serveraddress = "example.azurecr.io"
        username = "user"
        password = "secret-password"
    """))
    rows = no_effect_rows(run_check(config, tmp_path / "state", tmp_path / "run"))
    assert rows["agent.config.auth"] == ("warning", "modules run as host processes: the agent's executable is "
                                                    "never pulled from a registry")


def test_check_says_cloud_and_watchdog_keys_have_no_effect_without_provisioning_or_agent(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("cloud_timeout_sec = 20\ncloud_retries = 2\nprefer_module_identity_cache = true\n"
                      + EFFECTIVE + "\n[watchdog]\nmax_retries = 3\n")
    rows = no_effect_rows(run_check(config, tmp_path / "state", tmp_path / "run"))
    assert set(rows) == {"cloud_timeout_sec", "cloud_retries", "prefer_module_identity_cache",
                         "watchdog.max_retries"}
    assert "no [provisioning]" in rows["cloud_retries"][1] and "no [agent]" in rows["watchdog.max_retries"][1]


def test_check_does_not_flag_cloud_keys_of_a_provisioned_device(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("cloud_timeout_sec = 20\ncloud_retries = 2\nprefer_module_identity_cache = true\n"
                      'auto_reprovisioning_mode = "OnErrorOnly"\n' + EFFECTIVE + textwrap.dedent("""
        [provisioning]
        source = "dps"
        global_endpoint = "https://global.azure-devices-provisioning.net"
        id_scope = "0ab1234C5D6"

        [provisioning.attestation]
        method = "symmetric_key"
        registration_id = "checked-device"
        symmetric_key = { value = "YXppb3QtaWRlbnRpdHktc2VydmljZXxhemlvdC1pZGU=" }
    """))
    rows = json.loads(run_check(config, tmp_path / "state", tmp_path / "run").stdout)
    assert [r["outcome"] for r in rows if r["name"] == "settings without effect"] == ["ok"]


def test_check_lists_container_only_keys_of_a_host_process_device(tmp_path: Path) -> None:
    """The reader's own warnings become rows too: image garbage collection has no images to collect when modules
    are host processes."""
    config = tmp_path / "config.toml"
    config.write_text(EFFECTIVE + '\n[image_garbage_collection]\nenabled = true\ncleanup_time = "03:00"\n')
    checked = run_check(config, tmp_path / "state", tmp_path / "run")
    rows = no_effect_rows(checked)
    assert rows["image_garbage_collection"][0] == "warning"
    config_row = next(r for r in json.loads(checked.stdout) if r["name"] == "configuration")
    assert config_row["outcome"] == "ok"  # said once, in its own row


def test_check_names_keys_of_the_provisioning_source_not_chosen(tmp_path: Path) -> None:
    """DPS keys on a manually provisioned device, and manual ones on a DPS device, do nothing."""
    manual = tmp_path / "manual.toml"
    manual.write_text(EFFECTIVE + textwrap.dedent("""
        [provisioning]
        source = "manual"
        connection_string = "HostName=hub.example.net;DeviceId=m;SharedAccessKey=YXppb3QtaWRlbnRpdHktc2VydmljZXxhemlvdC1pZGU="
        global_endpoint = "https://global.azure-devices-provisioning.net"
        id_scope = "0ab1234C5D6"
        payload = { uri = "file:///etc/hostname" }
    """))
    rows = no_effect_rows(run_check(manual, tmp_path / "state", tmp_path / "run"))
    assert set(rows) == {"provisioning.global_endpoint", "provisioning.id_scope", "provisioning.payload"}
    assert 'source = "manual"' in rows["provisioning.payload"][1]
    dps = tmp_path / "dps.toml"
    dps.write_text(EFFECTIVE + textwrap.dedent("""
        [provisioning]
        source = "dps"
        global_endpoint = "https://global.azure-devices-provisioning.net"
        id_scope = "0ab1234C5D6"
        device_id = "d"

        [provisioning.attestation]
        method = "symmetric_key"
        registration_id = "d"
        symmetric_key = { value = "YXppb3QtaWRlbnRpdHktc2VydmljZXxhemlvdC1pZGU=" }
    """))
    assert set(no_effect_rows(run_check(dps, tmp_path / "state", tmp_path / "run"))) == {"provisioning.device_id"}


def test_check_names_est_keys_the_est_server_or_a_missing_identity_makes_moot(tmp_path: Path) -> None:
    """edge_ca.expiry_days when the EST server issues the edge CA, and identity_auto_renew with no EST identity."""
    config = tmp_path / "config.toml"
    config.write_text('hostname = "est-moot"\n' + textwrap.dedent("""
        [cert_issuance.est]
        trusted_certs = []

        [cert_issuance.est.auth]
        username = "user"
        password = "secret-password"

        [cert_issuance.est.identity_auto_renew]
        rotate_key = true
        threshold = "80%"
        retry = "4%"

        [cert_issuance.est.urls]
        default = "https://est.example.net/.well-known/est"

        [edge_ca]
        method = "est"
        common_name = "EST edge CA"
        expiry_days = 90
    """))
    rows = no_effect_rows(run_check(config, tmp_path / "state", tmp_path / "run"))
    assert set(rows) == {"edge_ca.expiry_days", "cert_issuance.est.identity_auto_renew"}
    assert "EST server decides" in rows["edge_ca.expiry_days"][1]
