"""A file named on the command line is written as a new file renamed into place: never through a symlink planted
under that name, never into a file someone else planted there (session 14, brk14b support_bundle_symlink: root's
`support-bundle` truncated the file a user's symlink named, and wrote the bundle into the user's 0666 file). And
`config mp` takes the connection string without putting it in argv (brk14b mp_argv_leak)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeward.cli.config_cmds import config
from edgeward.cli.init_cmd import init

KEY = base64.b64encode(b"device key bytes, 32 bytes long!").decode()
CONN = f"HostName=hub.example.net;DeviceId=edge-9;SharedAccessKey={KEY}"
PRECIOUS = b"root-only precious content\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.write_bytes(PRECIOUS)
    v.chmod(0o600)
    return v


def _planted(tmp_path: Path, kind: str, victim: Path) -> Path:
    """What another user leaves under the output name in a directory they own."""
    home = tmp_path / "home"
    home.mkdir()
    target = home / "out"
    if kind == "symlink":
        target.symlink_to(victim)
    elif kind == "dangling symlink":
        target.symlink_to(tmp_path / "nothing-yet")
    elif kind == "foreign file":
        target.write_bytes(b"")
        target.chmod(0o666)
        os.chown(target, 65534, 65534)
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    return target


def _untouched(tmp_path: Path, kind: str, target: Path, victim: Path) -> None:
    assert victim.read_bytes() == PRECIOUS and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert not (tmp_path / "nothing-yet").exists()
    st = os.lstat(target)
    if kind == "foreign file":
        assert st.st_size == 0 and st.st_uid == 65534 and stat.S_IMODE(st.st_mode) == 0o666
    if "symlink" in kind:
        assert stat.S_ISLNK(st.st_mode)


KINDS = ["symlink", "dangling symlink", "foreign file", "fifo", "directory"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="plants another uid's file")


@needs_root
@pytest.mark.parametrize("kind", KINDS)
def test_init_refuses_a_planted_name(tmp_path: Path, victim: Path, kind: str) -> None:
    target = _planted(tmp_path, kind, victim)
    result = CliRunner().invoke(init, ["--quickstart", "--force", "-o", str(target)])
    assert result.exit_code == 1, result.output
    assert "error" in result.output and "Traceback" not in result.output
    _untouched(tmp_path, kind, target, victim)


@needs_root
@pytest.mark.parametrize("kind", KINDS)
def test_config_mp_refuses_a_planted_name(tmp_path: Path, victim: Path, kind: str) -> None:
    target = _planted(tmp_path, kind, victim)
    result = CliRunner().invoke(config, ["mp", "--connection-string-file", "-", "-o", str(target), "--force"],
                                input=CONN)
    assert result.exit_code == (2 if kind == "directory" else 1), result.output  # click refuses a directory
    _untouched(tmp_path, kind, target, victim)


def test_own_files_are_replaced_with_a_new_private_file(tmp_path: Path) -> None:
    out = tmp_path / "config.toml"
    out.write_text("# mine\n")
    out.chmod(0o644)
    before = out.stat().st_ino
    result = CliRunner().invoke(init, ["--quickstart", "--force", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_ino != before and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "edgeward init" in out.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]  # no temp file left


def test_mp_reads_the_connection_string_from_stdin_or_a_file_without_a_warning(tmp_path: Path) -> None:
    out = tmp_path / "a.toml"
    piped = CliRunner().invoke(config, ["mp", "-c", "-", "-o", str(out)], input=CONN + "\n")
    assert piped.exit_code == 0, piped.output
    assert KEY in out.read_text() and "warning" not in piped.output and KEY not in piped.output
    source = tmp_path / "conn.txt"
    source.write_text(CONN + "\n")
    source.chmod(0o600)
    from_file = CliRunner().invoke(config, ["mp", "--connection-string-file", str(source), "-o",
                                            str(tmp_path / "b.toml")])
    assert from_file.exit_code == 0, from_file.output
    assert (tmp_path / "b.toml").read_text() == out.read_text() and "warning" not in from_file.output
    assert stat.S_IMODE((tmp_path / "b.toml").stat().st_mode) == 0o600


def test_mp_on_the_command_line_still_works_but_warns(tmp_path: Path) -> None:
    out = tmp_path / "c.toml"
    given = CliRunner().invoke(config, ["mp", "--connection-string", CONN, "-o", str(out)])
    assert given.exit_code == 0, given.output
    assert KEY in out.read_text() and "warning" in given.output and "/proc" in given.output
    assert KEY not in given.output


def test_mp_needs_a_connection_string_from_somewhere(tmp_path: Path) -> None:
    none = CliRunner().invoke(config, ["mp", "-o", str(tmp_path / "d.toml")], input="")
    assert none.exit_code == 2 and "--connection-string-file" in none.output
    both = CliRunner().invoke(config, ["mp", "-c", CONN, "--connection-string-file", "-", "-o",
                                       str(tmp_path / "d.toml")], input=CONN)
    assert both.exit_code == 2 and not (tmp_path / "d.toml").exists()
    bad = CliRunner().invoke(config, ["mp", "-c", "-", "-o", str(tmp_path / "d.toml")],
                             input="HostName=h;DeviceId=d;SharedAccessKey=c2VjcmV0!")
    assert bad.exit_code == 3 and "c2VjcmV0" not in bad.output and not (tmp_path / "d.toml").exists()
