"""`edgeward config apply|import|mp` driven through click, as a user runs them."""

from __future__ import annotations

import base64
import stat
import tomllib
from pathlib import Path

from click.testing import CliRunner

from edgeward.cli.config_cmds import config

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
KEY = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_apply_writes_owner_only_files_equal_to_the_golden_ones(tmp_path: Path) -> None:
    case = GOLDEN / "config" / "dps-tpm"
    out = tmp_path / "out"
    result = CliRunner().invoke(config, ["apply", "-c", str(case / "config.toml"), "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in out.iterdir())
    assert written == ["certd.toml", "edged.toml", "identityd.toml", "keyd.toml", "tpmd.toml"]
    for name in written:
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
        if name != "edged.toml":
            assert (out / name).read_text() == (case / "expected" / name).read_text()
    # edged.toml: also the super config's and the out dir's paths, which no module may bind
    edged, expected = (tomllib.loads(p.read_text()) for p in (out / "edged.toml", case / "expected" / "edged.toml"))
    expected["edgeward"]["peers"]["protected_paths"][:0] = [str(case / "config.toml"), str(out)]
    assert edged == expected
    assert "tpmd.toml" in result.output and "provisioning (dps, tpm)" in result.output


def test_apply_dry_run_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    source = tmp_path / "config.toml"
    source.write_text("surprise = 1\n" + (GOLDEN / "config" / "full-iotedge" / "config.toml").read_text())
    result = CliRunner().invoke(config, ["apply", "-c", str(source), "--out-dir", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would write 4 files" in result.output
    assert "surprise: unknown setting, ignored" in result.output  # warnings are shown
    assert not out.exists()


def test_apply_of_an_invalid_config_exits_3_listing_every_problem(tmp_path: Path) -> None:
    case = GOLDEN / "config" / "bad" / "unknown-source"
    result = CliRunner().invoke(config, ["apply", "-c", str(case / "config.toml"), "--out-dir", str(tmp_path)])
    assert result.exit_code == 3
    text = " ".join(result.output.split())
    assert "has 5 problem(s)" in text
    for line in (case / "expected_errors.txt").read_text().splitlines():
        assert " ".join(line.split()) in text
    assert list(tmp_path.iterdir()) == []


def test_import_writes_a_super_config_and_lists_what_was_not_converted(tmp_path: Path) -> None:
    out = tmp_path / "config.toml"
    yaml = GOLDEN / "config_import" / "dps-x509-device-ca" / "config.yaml"
    result = CliRunner().invoke(config, ["import", "-i", str(yaml), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == (GOLDEN / "config_import" / "dps-x509-device-ca" / "expected.toml").read_text()
    assert "not converted: listen.min_tls_version" in result.output
    again = CliRunner().invoke(config, ["import", "-i", str(yaml), "-o", str(out)])
    assert again.exit_code == 1 and "--force" in again.output


def test_mp_refuses_to_overwrite_without_force_and_never_echoes_the_key(tmp_path: Path) -> None:
    out = tmp_path / "config.toml"
    conn = f"HostName=hub.example.net;DeviceId=edge-9;SharedAccessKey={KEY}"
    first = CliRunner().invoke(config, ["mp", "-c", conn, "-o", str(out)])
    assert first.exit_code == 0, first.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and KEY in out.read_text()
    assert KEY not in first.output
    out.write_text("# mine\n")
    second = CliRunner().invoke(config, ["mp", "-c", conn, "-o", str(out)])
    assert second.exit_code == 1 and out.read_text() == "# mine\n"
    forced = CliRunner().invoke(config, ["mp", "-c", conn, "-o", str(out), "--force"])
    assert forced.exit_code == 0 and "edge-9" in out.read_text()
    bad = CliRunner().invoke(config, ["mp", "-c", "HostName=hub.example.net;DeviceId=x;SharedAccessKey=c2VjcmV0!",
                                      "-o", str(tmp_path / "other.toml")])
    assert bad.exit_code == 3 and "c2VjcmV0" not in bad.output and not (tmp_path / "other.toml").exists()
