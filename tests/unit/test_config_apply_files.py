"""`edgeward config apply` in the packaged deployment: each file owned by its service's user, mode 0600, rewritten
only when its content changed, and exactly the units whose file changed restarted (`systemctl try-restart`)."""

from __future__ import annotations

import os
import stat
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeward.cli.config_cmds import config
from edgeward.cli.system_cmds import UNITS, RestartFailed, try_restart
from edgeward.config.apply_files import (
    SERVICE_UNITS,
    FileResult,
    file_owners,
    planned,
    units_to_restart,
    write_service_files,
)

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
TEXTS = {"keyd.toml": "a = 1\n", "certd.toml": "b = 1\n", "identityd.toml": "c = 1\n", "tpmd.toml": "[tpm]\n",
         "edged.toml": "d = 1\n"}


def owner_and_mode(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_file_owners_names_existing_users_when_root_else_nobody() -> None:
    owners = file_owners({"keyd.toml": "root", "certd.toml": "edgeward-no-such-user"})
    if os.geteuid() == 0:
        assert owners == {"keyd.toml": (0, 0)}  # a missing service user: the file stays whoever runs apply's
    else:
        assert owners == {}


@as_root
def test_files_go_to_their_owner_mode_0600_and_unchanged_ones_are_not_rewritten(tmp_path: Path) -> None:
    owners = {"keyd.toml": (4242, 4243), "certd.toml": (4244, 4244)}
    first = write_service_files(TEXTS, tmp_path, owners)
    assert [(r.name, r.change) for r in first] == [(name, "new") for name in TEXTS]
    assert owner_and_mode(tmp_path / "keyd.toml") == (4242, 4243, 0o600)
    assert owner_and_mode(tmp_path / "certd.toml") == (4244, 4244, 0o600)
    assert owner_and_mode(tmp_path / "edged.toml") == (0, 0, 0o600)  # edged.toml stays root's
    inodes = {name: (tmp_path / name).stat().st_ino for name in TEXTS}

    again = write_service_files({**TEXTS, "certd.toml": "b = 2\n"}, tmp_path, owners)
    assert {r.name: r.change for r in again} == {**{name: "unchanged" for name in TEXTS}, "certd.toml": "changed"}
    assert all((tmp_path / n).stat().st_ino == inodes[n] for n in TEXTS if n != "certd.toml")  # not rewritten
    assert (tmp_path / "certd.toml").read_text() == "b = 2\n"
    assert owner_and_mode(tmp_path / "certd.toml") == (4244, 4244, 0o600)
    assert units_to_restart(again) == ["edgeward-certd"]


@as_root
def test_an_unchanged_file_gets_its_owner_and_mode_put_right(tmp_path: Path) -> None:
    write_service_files(TEXTS, tmp_path, {})
    os.chmod(tmp_path / "keyd.toml", 0o644)
    inode = (tmp_path / "keyd.toml").stat().st_ino
    # the service user was created after the first apply: its file is given to it, content and inode unchanged
    results = {r.name: r for r in write_service_files(TEXTS, tmp_path, {"keyd.toml": (4242, 4242)})}
    assert results["keyd.toml"] == FileResult("keyd.toml", "unchanged", (4242, 4242), fixed=True)
    assert owner_and_mode(tmp_path / "keyd.toml") == (4242, 4242, 0o600)
    assert (tmp_path / "keyd.toml").stat().st_ino == inode
    assert not results["certd.toml"].fixed
    assert units_to_restart(results.values()) == []


def test_a_file_no_longer_written_is_removed_and_its_unit_not_restarted(tmp_path: Path) -> None:
    write_service_files(TEXTS, tmp_path, {})
    without_tpm = {k: v for k, v in TEXTS.items() if k != "tpmd.toml"}
    assert FileResult("tpmd.toml", "removed") in planned(without_tpm, tmp_path)
    results = write_service_files(without_tpm, tmp_path, {})
    assert FileResult("tpmd.toml", "removed") in results
    assert not (tmp_path / "tpmd.toml").exists()
    assert units_to_restart(results) == []


def test_a_symlink_in_place_of_a_file_is_replaced_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text(TEXTS["keyd.toml"])
    target.chmod(0o644)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keyd.toml").symlink_to(target)
    results = {r.name: r.change for r in write_service_files(TEXTS, out, {})}
    assert results["keyd.toml"] == "changed"
    assert not (out / "keyd.toml").is_symlink() and stat.S_IMODE((out / "keyd.toml").stat().st_mode) == 0o600
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # what the link pointed at is left alone


def test_units_restart_in_dependency_order() -> None:
    results = [FileResult(name, "changed") for name in reversed(list(TEXTS))]
    assert units_to_restart(results) == list(SERVICE_UNITS.values())
    assert set(SERVICE_UNITS.values()) == set(UNITS)  # every unit `system restart` knows, edgeward-tpmd too


def fake_systemctl(tmp_path: Path, failing: str) -> tuple[Path, Path]:
    """A stand-in for systemctl that records what it was asked and fails for one unit, as systemctl does when a
    unit fails to start again."""
    calls = tmp_path / "calls"
    script = tmp_path / "systemctl"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = is-enabled ]; then  # the module runtime is the enabled unit, as the package installs it
            [ "$3" = edgeward-edged.service ]
            exit $?
        fi
        echo "$@" >> {calls}
        if [ "$2" = "{failing}.service" ]; then
            echo "Job for $2 failed because the control process exited with error code." >&2
            exit 1
        fi
    """))
    script.chmod(0o755)
    return script, calls


def test_try_restart_names_every_unit_that_failed(tmp_path: Path) -> None:
    systemctl, calls = fake_systemctl(tmp_path, failing="edgeward-certd")
    try_restart(["edgeward-keyd"], systemctl=str(systemctl))
    with pytest.raises(RestartFailed) as raised:
        try_restart(["edgeward-keyd", "edgeward-certd", "edgeward-edged"], systemctl=str(systemctl))
    assert list(raised.value.failures) == ["edgeward-certd"]
    assert "Job for edgeward-certd.service failed" in raised.value.failures["edgeward-certd"]
    assert calls.read_text().splitlines() == ["try-restart edgeward-keyd.service", "try-restart edgeward-keyd.service",
                                              "try-restart edgeward-certd.service",
                                              "restart edgeward-edged.service"]
    with pytest.raises(RestartFailed, match="cannot run"):
        try_restart(["edgeward-keyd"], systemctl=str(tmp_path / "missing"))


def test_apply_reports_what_changed_and_which_units_it_did_not_restart(tmp_path: Path) -> None:
    source = tmp_path / "config.toml"
    out = tmp_path / "etc"
    source.write_text('hostname = "edge-1"\n[cert_issuance.server]\nmethod = "self_signed"\n')
    first = CliRunner().invoke(config, ["apply", "-c", str(source), "--out-dir", str(out), "--no-restart"])
    assert first.exit_code == 0, first.output
    assert "4 new, changed or removed" in " ".join(first.output.split())
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in out.iterdir())
    again = CliRunner().invoke(config, ["apply", "-c", str(source), "--out-dir", str(out), "--no-restart"])
    assert again.exit_code == 0, again.output
    assert "0 new, changed or removed" in " ".join(again.output.split()) and "not restarted" not in again.output
    source.write_text('hostname = "edge-1"\n[cert_issuance.server]\nmethod = "self_signed"\nexpiry_days = 7\n')
    dry = CliRunner().invoke(config, ["apply", "-c", str(source), "--out-dir", str(out), "--dry-run"])
    assert "would write 4 files" in dry.output and "not restarted" not in dry.output
    assert "expiry_days = 7" not in (out / "certd.toml").read_text()
    changed = CliRunner().invoke(config, ["apply", "-c", str(source), "--out-dir", str(out), "--no-restart"])
    text = " ".join(changed.output.split())
    assert changed.exit_code == 0 and "1 new, changed or removed" in text, changed.output
    assert "not restarted (--no-restart): edgeward-certd read" in text  # certd.toml alone changed
