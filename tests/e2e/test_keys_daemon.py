"""The daemon as a subprocess, driven as a user would: principals enforced per uid over the real socket (clients
run as other uids with setpriv), misconfiguration reported in one line, socket activation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeward.supervise import DaemonFailed, running_daemon, start_daemon, stop_daemon
from tests.fixtures.peers import CLIENT, as_uid


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run clients as other uids")
def test_principals_are_enforced_per_uid_over_the_real_socket(public_dir: Path) -> None:
    state, run = public_dir / "state", public_dir / "run"
    config = public_dir / "keyd.toml"
    config.write_text(textwrap.dedent("""
        [[principal]]
        uid = 1000
        keys = ["device-*", "exact-key"]

        [[principal]]
        uid = 1001
        keys = ["other-?"]
    """))
    with running_daemon(["run", "-c", str(config), "--state-dir", str(state), "--run-dir", str(run)]):
        sock = run / "keyd.sock"
        q = "?api-version=2021-05-01"
        status, body = as_uid(1000, sock, "POST", "/keypair" + q, {"keyId": "device-1"})
        assert status == 200 and "keyHandle" in body
        handle = body["keyHandle"]
        assert as_uid(1000, sock, "POST", "/keypair" + q, {"keyId": "exact-key"})[0] == 200
        status, body = as_uid(1000, sock, "POST", "/keypair" + q, {"keyId": "exact-key-2"})
        assert status == 401 and body["message"] == "uid 1000 is not authorized for key 'exact-key-2'"
        assert as_uid(1000, sock, "GET", "/keypair/other-1" + q)[0] == 401
        assert as_uid(1001, sock, "GET", "/keypair/device-1" + q)[0] == 401
        assert as_uid(1001, sock, "POST", "/keypair" + q, {"keyId": "other-1"})[0] == 200
        assert as_uid(1001, sock, "POST", "/keypair" + q, {"keyId": "other-12"})[0] == 401
        # moving needs both ids
        status, body = as_uid(1000, sock, "POST", "/keypair/move" + q, {"from": "device-1", "to": "other-2"})
        assert status == 401 and "other-2" in body["message"]
        # an unknown uid may call nothing, not even with a handle: it is no principal of keyd (in aziot's
        # deployment it could not open the socket at all) ...
        assert as_uid(4242, sock, "POST", "/keypair" + q, {"keyId": "device-9"})[0] == 401
        status, body = as_uid(4242, sock, "POST", "/parameters/algorithm" + q, {"keyHandle": handle})
        assert status == 401 and "row 'keyd (every route)'" in body["message"], body
        # ... while a principal's operations by handle need no glob (the handle is the capability), as in aziot
        status, body = as_uid(1001, sock, "POST", "/parameters/algorithm" + q, {"keyHandle": handle})
        assert (status, body) == (200, {"value": "ECDSA"})
        # root may use every key
        assert as_uid(0, sock, "GET", "/keypair/other-1" + q)[0] == 200


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ('[aziot_keys]\npkcs11_lib_path = "/nonexistent/libp11.so"\npkcs11_base_slot = "pkcs11:token=x?pin-value=1"\n',
         "cannot load the PKCS#11 library '/nonexistent/libp11.so' (setting aziot_keys.pkcs11_base_slot)"),
        ('[aziot_keys]\npkcs11_lib_path = "/usr/lib/softhsm/libsofthsm2.so"\n'
         'pkcs11_base_slot = "pkcs11:token=no-such-token?pin-value=1234"\n',
         "no single PKCS#11 token with token label 'no-such-token'"),
        ('[aziot_keys]\npkcs11_lib_path = "/usr/lib/softhsm/libsofthsm2.so"\n'
         'pkcs11_base_slot = "pkcs11:token={label}?pin-value=9999"\n', "rejected the PIN: check the pin-value in aziot_keys.pkcs11_base_slot"),
        ('[edgeward.keys]\nbackend = "tpm"\ntpm_tcti = "swtpm:host=127.0.0.1,port=1"\n',
         "edgeward.keys.tpm_tcti"),
    ],
    ids=["missing-library", "missing-token", "wrong-pin", "tpm-unreachable"],
)
def test_misconfigured_backend_fails_at_start_with_one_clear_line(
    tmp_path: Path, softhsm: object, config: str, fragment: str
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(config.replace("{label}", softhsm.label))  # type: ignore[attr-defined]
    proc = subprocess.run([sys.executable, "-m", "edgeward", "run", "-c", str(cfg), "--state-dir",
                           str(tmp_path / "s"), "--run-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, TSS2_LOG="all+NONE"))
    assert proc.returncode == 4, proc.stderr
    assert fragment in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "keyd.sock").exists()


def test_invalid_config_lists_every_problem(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(textwrap.dedent("""
        [aziot_keys]
        homedir_path = 7
        surprise = true

        [preloaded_keys]
        a = "http://example/key"

        [edgeward.keys]
        backend = "quantum"

        [[principal]]
        uid = -5
        keys = ["x"]
    """))
    proc = subprocess.run([sys.executable, "-m", "edgeward", "run", "-c", str(cfg), "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    err = " ".join(proc.stderr.split())
    for expected in ("aziot_keys.homedir_path = 7: expected a string",
                     "preloaded_keys.a = 'http://example/key': expected a valid key URI (unsupported scheme",
                     "edgeward.keys.backend = 'quantum': expected \"software\", \"pkcs11\" or \"tpm\"",
                     "principal[0].uid = -5: expected a non-negative uid",
                     "has 4 problem(s)"):
        assert expected in err, err
    assert "Traceback" not in proc.stderr


def test_serve_keys_with_socket_activation(tmp_path: Path) -> None:
    """systemd passes a listening socket as fd 3 with LISTEN_FDNAMES=keyd; the daemon serves on it."""
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    wrapper = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
        "os.environ['LISTEN_FDS'] = '1'; os.environ['LISTEN_FDNAMES'] = 'keyd'; "
        "sys.argv = ['edgeward'] + sys.argv[2:]; from edgeward.cli.entry import main; main()"
    )
    proc = None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", wrapper, str(listener.fileno()), "serve", "keys", "--state-dir",
             str(tmp_path / "s"), "--run-dir", str(tmp_path / "unused")],
            pass_fds=(listener.fileno(),), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        listener.close()
        out = subprocess.run(["/usr/bin/python3", "-c", CLIENT, str(path), "POST", "/keypair?api-version=2021-05-01",
                              json.dumps({"keyId": "activated"})], capture_output=True, text=True, timeout=30)
        assert out.stdout.startswith("200 "), (out.stdout, out.stderr)
        assert not (tmp_path / "unused" / "keyd.sock").exists()
    finally:
        if proc is not None:
            stop_daemon(proc)


def test_daemon_that_cannot_start_reports_instead_of_hanging(tmp_path: Path) -> None:
    with pytest.raises(DaemonFailed, match="exited with code 3"):
        start_daemon(["run", "-c", str(tmp_path / "missing.toml"), "--state-dir", str(tmp_path)], timeout=30)
