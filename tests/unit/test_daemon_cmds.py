"""The daemon's own command line (`edgeward run`, `edgeward serve`, parsed without click): usage mistakes exit 2
with the subcommand's usage and the reason, before anything is read or started; the click group passes the same
arguments to the same parser."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeward.cli.daemon_cmds import main
from edgeward.cli.main import cli


@pytest.mark.parametrize(("argv", "reason", "usage"), [
    (["serve", "keylime-agent", "--config-dir", "."], "serve keylime-agent reads the super config (-c)", "serve"),
    (["serve", "keys", "-c", "config.toml", "--config-dir", "."], "are mutually exclusive", "serve"),
    (["serve", "kyes"], "invalid choice: 'kyes'", "serve"),
    (["serve", "keys", "--config"], "expected one argument", "serve"),
    (["serve", "keys", "--bogus"], "unrecognized arguments: --bogus", "serve"),
    (["run", "--state", "x"], "unrecognized arguments: --state x", "run"),  # no abbreviations: a typo is no option
    (["start"], "invalid choice: 'start'", ""),
])
def test_usage_mistakes_exit_2_with_the_reason(argv: list[str], reason: str, usage: str,
                                               capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert reason in err
    assert f"usage: edgeward {usage}".rstrip() + " [-h]" in err  # the usage of the command that was given
    assert not (tmp_path / "state").exists() and not (tmp_path / "x").exists()


def test_a_config_dir_that_is_a_file_is_a_usage_mistake(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "keyd.toml"
    afile.write_text("")
    with pytest.raises(SystemExit) as e:
        main(["serve", "keys", "--config-dir", str(afile), "--state-dir", str(tmp_path / "s")])
    assert e.value.code == 2
    assert f"--config-dir {afile}: not a directory" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_the_click_group_passes_serve_on(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["-v", "serve", "keys", "-c", str(tmp_path / "missing.toml"), "--state-dir",
                                      str(tmp_path / "s"), "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 3, result.output
    assert f"config file {tmp_path / 'missing.toml'} does not exist" in " ".join(result.output.split())
