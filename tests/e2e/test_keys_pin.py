"""A wrong PKCS#11 PIN stops the daemon at start with one line naming the setting that holds it, for the base slot
and for a preloaded key's URI on the same token (which the token, already logged in, would never check)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.softhsm import SoftHsm


def start(tmp_path: Path, config: str) -> tuple[int | None, str]:
    """Run the daemon; (exit code, stderr) if it exits, (None, stderr so far) once it serves. Always stopped."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(config)
    run = tmp_path / "r"
    err = tmp_path / "stderr"
    with err.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "edgeward", "run", "-c", str(cfg), "--state-dir",
                                 str(tmp_path / "s"), "--run-dir", str(run)], stdout=subprocess.DEVNULL, stderr=sink,
                                env=dict(os.environ, TSS2_LOG="all+NONE"))
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and not (run / "keyd.sock").exists():
            assert time.monotonic() < deadline, "the daemon neither exited nor served"
            time.sleep(0.05)
        return proc.poll(), err.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def base_slot(hsm: SoftHsm, pin: str) -> str:
    return f'[aziot_keys]\npkcs11_lib_path = "{hsm.lib}"\npkcs11_base_slot = "pkcs11:token={hsm.label}?pin-value={pin}"\n'


def test_a_wrong_base_slot_pin_exits_4_naming_the_setting(tmp_path: Path, softhsm: SoftHsm) -> None:
    code, stderr = start(tmp_path, base_slot(softhsm, "9876"))
    line = " ".join(stderr.split())
    assert code == 4, stderr
    assert (f"the PKCS#11 token with token label '{softhsm.label}' rejected the PIN: check the pin-value in "
            "aziot_keys.pkcs11_base_slot") in line
    assert "9876" not in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("pin", ["9876", ""])
def test_a_wrong_pin_in_a_preloaded_key_uri_on_the_logged_in_token_is_refused_at_start(
    tmp_path: Path, softhsm: SoftHsm, pin: str
) -> None:
    config = base_slot(softhsm, softhsm.pin) + (
        f'\n[preloaded_keys]\ndevice-id = "pkcs11:token={softhsm.label};object=device-id?pin-value={pin}"\n')
    code, stderr = start(tmp_path, config)
    line = " ".join(stderr.split())
    assert code == 4, stderr
    assert ("the pin-value of preloaded_keys.device-id differs from the PIN aziot_keys.pkcs11_base_slot logged in to "
            f"the PKCS#11 token with token label '{softhsm.label}'") in line
    assert (not pin or pin not in stderr) and "Traceback" not in stderr


def test_a_preloaded_key_uri_with_the_right_pin_shares_the_login(tmp_path: Path, softhsm: SoftHsm) -> None:
    config = base_slot(softhsm, softhsm.pin) + (
        f'\n[preloaded_keys]\ndevice-id = "pkcs11:token={softhsm.label};object=device-id?pin-value={softhsm.pin}"\n')
    code, stderr = start(tmp_path, config)
    assert code is None, stderr
