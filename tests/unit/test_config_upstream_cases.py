"""IoT Edge's own configuration test cases (vendored under tests/golden/config_import/upstream, see SOURCE.md).

Each ``old-config.yaml`` -> ``super-config.toml`` pair is what ``iotedge config import`` must produce; the pair is
compared as documents with IoT Edge 1.5's defaults filled in on both sides (upstream's writer spells out empty
tables and defaults, Edgeward's leaves them out: the same configuration either way). Every ``super-config.toml`` is
then applied with ``edgeward config apply --dry-run``: no error, and no setting reported as ignored.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgeward.cli.config_cmds import config
from edgeward.config.import_v1 import import_v1_config

UPSTREAM = Path(__file__).resolve().parent.parent / "golden" / "config_import" / "upstream"
PAIRS = sorted(d.name for d in UPSTREAM.iterdir() if (d / "old-config.yaml").is_file())
SUPER = sorted(d.name for d in UPSTREAM.iterdir() if (d / "super-config.toml").is_file())
# upstream's import test names the key file it found this way (edgelet/iotedge/src/config/import/mod.rs)
UPSTREAM_KEY_PATH = "/tmp/master-encryption-key"  # a value compared and replaced, never opened

# IoT Edge 1.5's value for each key when the super config leaves it out (edgelet-settings, aziot config crates).
DEFAULTS_15: dict[str, Any] = {
    "auto_reprovisioning_mode": "Dynamic",
    "prefer_module_identity_cache": False,
    "cloud_timeout_sec": 10,
    "cloud_retries": 1,
    "agent": {"imagePullPolicy": "on-create"},
    "connect": {"workload_uri": "unix:///var/run/iotedge/workload.sock",
                "management_uri": "unix:///var/run/iotedge/mgmt.sock"},
    "listen": {"workload_uri": "fd://aziot-edged.workload.socket", "management_uri": "fd://aziot-edged.mgmt.socket"},
    "watchdog": {"max_retries": "infinite"},
    "edge_ca": {"auto_generated_edge_ca_expiry_days": 90},
    "moby_runtime": {"uri": "unix:///var/run/docker.sock", "network": "azure-iot-edge"},
}


def _drop_empty(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _drop_empty(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v != {}}
    return value


def with_15_defaults(doc: dict[str, Any]) -> dict[str, Any]:
    """The configuration 1.5 actually runs with: defaults filled in, empty tables (= defaults) dropped."""
    out = copy.deepcopy(doc)
    for key, default in DEFAULTS_15.items():
        if key == "edge_ca" and "edge_ca" in out:
            continue  # a given edge CA replaces the quickstart default whole
        if isinstance(default, dict):
            table = out.setdefault(key, {})
            for name, value in default.items():
                table.setdefault(name, value)
        else:
            out.setdefault(key, default)
    return _drop_empty(out)


def test_all_17_upstream_import_pairs_are_vendored() -> None:
    assert len(PAIRS) == 17 and len(SUPER) == 23


@pytest.mark.parametrize("case", PAIRS)
def test_import_matches_iotedge_expected_conversion(case: str) -> None:
    folder = UPSTREAM / case
    key = UPSTREAM_KEY_PATH if (folder / "master-encryption-key").is_file() else None
    result = import_v1_config((folder / "old-config.yaml").read_text(), "old-config.yaml", key)
    imported = tomllib.loads(result.toml("old-config.yaml"))  # what the user's file holds, after TOML
    expected = tomllib.loads((folder / "super-config.toml").read_text())
    assert with_15_defaults(imported) == with_15_defaults(expected)


def test_import_maps_1_1_reprovisioning_flags_as_iotedge_does() -> None:
    base = ("provisioning:\n  source: dps\n  global_endpoint: https://dps.example\n  scope_id: s\n"
            "  attestation:\n    method: tpm\n    registration_id: r\n")
    def mode(extra: str) -> object:
        return import_v1_config(base + extra).doc["auto_reprovisioning_mode"]
    assert mode("") == "OnErrorOnly"
    assert mode("  dynamic_reprovisioning: false\n") == "OnErrorOnly"
    assert mode("  always_reprovision_on_startup: true\n") == "AlwaysOnStartup"
    assert mode("  dynamic_reprovisioning: true\n") == "Dynamic"
    assert mode("  dynamic_reprovisioning: true\n  always_reprovision_on_startup: true\n") == "Dynamic"


# Keys not honoured yet (issue 14): until they are, a warning about exactly these keys is expected here (an xfail
# naming them). Everything else must apply with no warning at all.
PENDING = {
    "sockets": ("connect", "listen", "moby_runtime", "image_garbage_collection", "agent.config.auth", "agent.env",
                "tpm.hierarchy_authorization"),
}
_PENDING_KEYS = tuple(k for keys in PENDING.values() for k in keys)


@pytest.mark.parametrize("case", SUPER)
def test_upstream_super_config_applies_with_no_error(case: str, tmp_path: Path) -> None:
    path = UPSTREAM / case / "super-config.toml"
    if (UPSTREAM / case / "master-encryption-key").is_file():
        # the 1.1 key file the case names, where this test put it (as upstream's apply test does)
        key = tmp_path / "master-encryption-key"
        key.write_bytes((UPSTREAM / case / "master-encryption-key").read_bytes())
        text = path.read_text()
        assert UPSTREAM_KEY_PATH in text
        path = tmp_path / "super-config.toml"
        path.write_text(text.replace(UPSTREAM_KEY_PATH, str(key)))
    result = CliRunner().invoke(config, ["apply", "-c", str(path), "--out-dir", str(tmp_path / "out"), "--dry-run"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0, text
    assert "would write" in text
    warnings = re.findall(r"warning: (\S+?):", text)
    mine = [w for w in warnings if not w.startswith(_PENDING_KEYS)]
    assert mine == [], f"settings reported as not taking effect: {mine}"
    pending = sorted({w for w in warnings if w.startswith(_PENDING_KEYS)})
    if pending:
        pytest.xfail(f"keys not honoured yet (issue 14): {pending}")
