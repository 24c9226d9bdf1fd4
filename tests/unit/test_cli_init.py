"""`edgeward init`: --quickstart and the questions produce a configuration that loads, saved 0600; bad answers are
asked again, an existing file is kept unless --force."""

from __future__ import annotations

import base64
from pathlib import Path

from click.testing import CliRunner

from edgeward.cli.main import cli
from edgeward.daemon import load_settings


def test_quickstart(tmp_path: Path) -> None:
    out = tmp_path / "config.toml"
    result = CliRunner().invoke(cli, ["init", "--quickstart", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o600
    settings = load_settings(out, tmp_path / "s", tmp_path / "r")
    assert settings.identity.provisioning is None and settings.runtime.engine in ("docker", "process")
    again = CliRunner().invoke(cli, ["init", "--quickstart", "-o", str(out)])
    assert again.exit_code == 1 and "--force" in again.output


def test_questions_with_a_manual_connection_string(tmp_path: Path) -> None:
    out = tmp_path / "config.toml"
    key = base64.b64encode(b"k" * 32).decode()
    answers = "\n".join(["edge-7", "process", "manual", "not a connection string",
                         f"HostName=hub.example;DeviceId=edge-7;SharedAccessKey={key}", ""])
    result = CliRunner().invoke(cli, ["init", "-o", str(out)], input=answers)
    assert result.exit_code == 0, result.output
    assert "name=value pairs" in result.output  # the bad answer was explained and asked again
    assert key not in result.output  # hidden input, never echoed
    settings = load_settings(out, tmp_path / "s", tmp_path / "r")
    assert settings.identity.hostname == "edge-7" and settings.identity.provisioning is not None
    assert settings.runtime.engine == "process"
