"""The state and run directories hold the master key, the keys and the sockets: a user who may rename an entry on
the way to them can swap them for their own (a master key of their choosing, after a restart). Found by the
session-11 review: `run --state-dir` took a directory owned by uid 1000 without a word."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeward.dirtrust import untrusted_dir

OTHER = 1000 if os.geteuid() != 1000 else 1001


@pytest.fixture
def base(tmp_path: Path) -> Path:
    os.chmod(tmp_path, 0o755)
    return tmp_path


def test_own_directories_and_ones_not_made_yet_are_trusted(base: Path) -> None:
    assert untrusted_dir(base) is None
    assert untrusted_dir(base / "not" / "made" / "yet") is None
    assert untrusted_dir(Path("/tmp") / "edgeward-test-absent") is None  # /tmp: world-writable, but sticky


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_directory_another_user_owns_is_refused_on_the_way_and_at_the_end(base: Path) -> None:
    theirs = base / "theirs"
    theirs.mkdir()
    os.chown(theirs, OTHER, OTHER)
    assert f"owned by uid {OTHER}" in (untrusted_dir(theirs) or "")
    assert str(theirs) in (untrusted_dir(theirs / "state") or "")  # they can rename it away
    link = base / "link"
    link.symlink_to(theirs)
    assert str(theirs) in (untrusted_dir(link / "state") or "")  # where it really is counts too


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o1777])
def test_a_directory_others_may_write_is_refused(base: Path, mode: int) -> None:
    shared = base / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    assert "writable by" in (untrusted_dir(shared) or "")
    if mode & 0o1000:  # sticky: others cannot rename what is ours inside it, but the final directory is refused
        assert untrusted_dir(shared / "state") is None
    else:
        assert "writable by" in (untrusted_dir(shared / "state") or "")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_the_daemon_refuses_to_start_on_one(base: Path) -> None:
    theirs = base / "theirs"
    theirs.mkdir()
    os.chown(theirs, OTHER, OTHER)
    run = subprocess.run([sys.executable, "-m", "edgeward", "run", "--state-dir", str(theirs), "--run-dir",
                          str(base / "run")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 3, run.stderr
    assert f"--state-dir {theirs}" in run.stderr and f"uid {OTHER}" in run.stderr
    assert not (theirs / "keys").exists()  # refused before anything was written there


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a symlink to another user needs root")
def test_a_symlink_another_user_owns_is_refused(base: Path) -> None:
    """Second review: a link uid 1000 owns in sticky /tmp, pointing at root's 0700 directory, passed; its owner may
    re-point it at any time."""
    ours = base / "ours"
    ours.mkdir(mode=0o700)
    sticky = base / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    link = sticky / "state"
    link.symlink_to(ours)
    os.chown(link, OTHER, OTHER, follow_symlinks=False)
    assert f"owned by uid {OTHER}" in (untrusted_dir(link) or "")


@pytest.mark.skipif(os.geteuid() != 0, reason="a second user needs root")
def test_a_directory_made_by_someone_else_before_the_daemon_is_refused(base: Path) -> None:
    """Second review: a state directory that did not exist yet passed, and uid 1000 made it before the daemon did.
    The daemon makes its directories first (exclusively where they are missing), then checks what is there."""
    from edgeward.dirtrust import make_trusted_dir

    sticky = base / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    assert make_trusted_dir(sticky / "mine") is None and (sticky / "mine").is_dir()
    theirs = sticky / "theirs"
    theirs.mkdir()
    os.chown(theirs, OTHER, OTHER)  # made by them first
    assert f"owned by uid {OTHER}" in (make_trusted_dir(theirs) or "")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_config_file_someone_else_could_write_is_refused(base: Path) -> None:
    """Second review: a config owned by uid 1000 that allows elevated permissions was taken."""
    from edgeward.dirtrust import untrusted_file

    config = base / "config.toml"
    config.write_text("")
    assert untrusted_file(config) is None
    os.chmod(config, 0o666)
    assert "writable by" in (untrusted_file(config) or "")
    os.chmod(config, 0o644)
    os.chown(config, OTHER, OTHER)
    assert f"owned by uid {OTHER}" in (untrusted_file(config) or "")
    run = subprocess.run([sys.executable, "-m", "edgeward", "run", "-c", str(config), "--state-dir", str(base / "s"),
                          "--run-dir", str(base / "r")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 3 and f"uid {OTHER}" in run.stderr, run.stderr
