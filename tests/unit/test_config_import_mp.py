"""`edgeward config import` (IoT Edge 1.1 config.yaml -> 1.5 super config) and `edgeward config mp`."""

from __future__ import annotations

import base64
import os
import tomllib
from pathlib import Path

import pytest

from edgeward.config.import_v1 import import_v1_config
from edgeward.config.mp import manual_provisioning_config
from edgeward.config.problems import ConfigError
from edgeward.daemon import load_settings
from edgeward.identity.settings import DpsProvisioning, ManualProvisioning

IMPORT = Path(__file__).resolve().parent.parent / "golden" / "config_import"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
CASES = sorted(d.name for d in IMPORT.iterdir() if (d / "config.yaml").is_file())
KEY = base64.b64encode(b"device key bytes, 32 bytes long!").decode()


@pytest.mark.parametrize("case", CASES)
def test_import_of_a_1_1_config_matches_golden_file_and_is_valid(case: str, tmp_path: Path) -> None:
    result = import_v1_config((IMPORT / case / "config.yaml").read_text(), "config.yaml")
    text = result.toml("config.yaml")
    expected = IMPORT / case / "expected.toml"
    if UPDATE:
        expected.write_text(text)
    assert text == expected.read_text()
    out = tmp_path / "config.toml"
    out.write_text(text)
    load_settings(out, tmp_path / "state", tmp_path / "run")  # what import writes, run accepts


def test_import_lists_what_it_could_not_convert() -> None:
    result = import_v1_config((IMPORT / "dps-x509-device-ca" / "config.yaml").read_text())
    assert "listen.min_tls_version (1.5 serves its APIs over Unix sockets only)" in result.not_converted
    assert result.doc["auto_reprovisioning_mode"] == "Dynamic"  # 1.1's dynamic_reprovisioning: true
    result = import_v1_config((IMPORT / "manual-x509-external-socket" / "config.yaml").read_text())
    assert result.not_converted == ["experimental_features"]
    assert result.doc["listen"] == {"workload_uri": "fd://aziot-edged.workload.socket",
                                    "management_uri": "fd://aziot-edged.mgmt.socket"}


def test_import_converts_1_1_connection_string_to_explicit_sas(tmp_path: Path) -> None:
    result = import_v1_config((IMPORT / "manual-connection-string" / "config.yaml").read_text())
    out = tmp_path / "c.toml"
    out.write_text(result.toml("config.yaml"))
    prov = load_settings(out, tmp_path, tmp_path).identity.provisioning
    assert isinstance(prov, ManualProvisioning) and prov.device_id == "legacy-1" and prov.auth == "sas"


def test_import_refuses_external_provisioning_and_hides_keys() -> None:
    with pytest.raises(ConfigError, match=r"external provisioning has no IoT Edge 1\.5 form"):
        import_v1_config("provisioning:\n  source: external\n  endpoint: http://localhost:9999\n")
    secret = "bm90IGJhc2U2NA!!"
    with pytest.raises(ConfigError) as raised:
        import_v1_config("provisioning:\n  source: dps\n  scope_id: x\n  attestation:\n    method: symmetric_key\n"
                         f"    registration_id: r\n    symmetric_key: '{secret}'\n")
    assert secret not in str(raised.value) and "symmetric_key = <redacted>" in str(raised.value)
    with pytest.raises(ConfigError, match="not valid YAML"):
        import_v1_config("provisioning: [unclosed")


def test_mp_writes_a_manual_provisioning_config_that_runs(tmp_path: Path) -> None:
    text = manual_provisioning_config(f"HostName=hub.example.net;DeviceId=edge-7;SharedAccessKey={KEY}")
    assert tomllib.loads(text)["provisioning"]["source"] == "manual"
    out = tmp_path / "config.toml"
    out.write_text(text)
    prov = load_settings(out, tmp_path, tmp_path).identity.provisioning
    assert isinstance(prov, ManualProvisioning) and (prov.hub, prov.device_id) == ("hub.example.net", "edge-7")


@pytest.mark.parametrize("bad, fragment", [
    ("HostName=hub.example.net;DeviceId=edge-7", "lacks SharedAccessKey"),
    (f"HostName=hub example;DeviceId=edge-7;SharedAccessKey={KEY}", "HostName = 'hub example'"),
    (f"HostName=hub.example.net;DeviceId=a/b;SharedAccessKey={KEY}", "DeviceId = 'a/b'"),
    ("HostName=hub.example.net;DeviceId=edge-7;SharedAccessKey=c2VjcmV0!", "not base64"),
])
def test_mp_rejects_bad_connection_strings_without_echoing_the_key(bad: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        manual_provisioning_config(bad)
    message = str(raised.value)
    assert fragment in message
    assert KEY not in message and "c2VjcmV0" not in message


def test_dps_payload_file_is_sent_inline(tmp_path: Path) -> None:
    payload = tmp_path / "payload.json"
    payload.write_text('{"modelId": "dtmi:example:edge;1", "tags": ["a", 1]}')
    config = tmp_path / "config.toml"
    config.write_text(f"""
[provisioning]
source = "dps"
id_scope = "0ab1234C5D6"
payload = {{ uri = "file://{payload}" }}
[provisioning.attestation]
method = "tpm"
registration_id = "r"
""")
    settings = load_settings(config, tmp_path, tmp_path)
    prov = settings.identity.provisioning
    assert isinstance(prov, DpsProvisioning)
    assert prov.payload == {"modelId": "dtmi:example:edge;1", "tags": ["a", 1]}
    assert settings.tpm is not None  # TPM attestation needs the TPM service, [tpm] or not
    payload.write_text("{not json")
    with pytest.raises(ConfigError, match=r"provisioning.payload.uri = .*: expected a readable JSON file"):
        load_settings(config, tmp_path, tmp_path)


def test_identity_service_finds_the_tpm_socket_named_in_tpm_endpoints(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("""
[provisioning]
source = "dps"
id_scope = "0ab1234C5D6"
[provisioning.attestation]
method = "tpm"
registration_id = "r"
[tpm.endpoints]
aziot_tpmd = "unix:///run/custom/tpmd.sock"
""")
    settings = load_settings(config, tmp_path, tmp_path)
    assert settings.tpm is not None
    assert settings.identity.tpmd_socket == settings.tpm.socket_path == Path("/run/custom/tpmd.sock")
