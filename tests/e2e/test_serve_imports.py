"""Each service imports only what it uses: `edgeward serve keys`, ready and serving, has loaded no code of the other
services and no pydantic (start-up time and memory on small devices); `edgeward run`, ready and idle, no pydantic
and no asn1crypto; neither loads click. Checked in a real daemon process, through its sys.modules."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edgeward.supervise import stop_daemon

# The daemon's own entry point, which writes the modules it has loaded to argv[1] as it exits.
WRAPPER = (
    "import atexit, sys; out = sys.argv[1]; "
    "atexit.register(lambda: open(out, 'w').write('\\n'.join(sorted(sys.modules)))); "
    "sys.argv = ['edgeward'] + sys.argv[2:]; from edgeward.cli.entry import main; main()"
)
OTHER_SERVICES = ("edgeward.runtime", "edgeward.tpm", "edgeward.certs", "edgeward.identity", "edgeward.attest.audit")


def modules_when_ready(args: list[str], tmp_path: Path, log: Path | None = None) -> set[str]:
    """Start the daemon, wait for its READY=1, stop it by its pid: the modules it had loaded. Its output goes to
    ``log`` when given (kept for the caller's own assertions)."""
    notify = tmp_path / "notify.sock"
    listing = tmp_path / "modules.txt"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(notify))
        listener.settimeout(60)
        with contextlib.ExitStack() as files:
            out = files.enter_context(log.open("wb")) if log is not None else subprocess.DEVNULL
            proc = subprocess.Popen([sys.executable, "-c", WRAPPER, str(listing), *args],
                                    env=dict(os.environ, NOTIFY_SOCKET=str(notify)), stdout=out,
                                    stderr=out if log is not None else subprocess.PIPE)
        try:
            assert b"READY=1" in listener.recv(4096)
        finally:
            code = stop_daemon(proc)
            assert code == 0, log.read_text() if log is not None else proc.stderr.read() if proc.stderr else ""
    return set(listing.read_text().split())


def loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(f"{p}.") for p in packages))


@pytest.mark.parametrize("own_file", [True, False], ids=["config-dir", "embedded-defaults"])
def test_serve_keys_loads_no_other_service(own_file: bool, tmp_path: Path) -> None:
    state = tmp_path / "state"
    args = ["serve", "keys", "--state-dir", str(state), "--run-dir", str(state / "run")]
    if own_file:
        config, out = tmp_path / "config.toml", tmp_path / "etc"
        config.write_text("")
        subprocess.run([sys.executable, "-m", "edgeward", "config", "apply", "-c", str(config), "--out-dir", str(out),
                        "--no-restart"], check=True, capture_output=True, timeout=60)
        args += ["--config-dir", str(out)]
    modules = modules_when_ready(args, tmp_path)
    assert "edgeward.keys.service" in modules  # it did serve keys
    if own_file:
        # reading keyd.toml needs nothing else: no other service, no super config translation, no x509
        assert loaded(modules, (*OTHER_SERVICES, "edgeward.config.super_config", "cryptography.x509")) == []
    else:
        # the super config is checked and split as `config apply` does, and keys reads only its own document of it:
        # no other service's settings reader, let alone its running code
        assert loaded(modules, ("edgeward.runtime.settings", "edgeward.runtime.engine", "edgeward.tpm",
                                "edgeward.certs.settings", "edgeward.identity.settings",
                                "edgeward.runtime.edge_ca", "edgeward.runtime.compose", "edgeward.certs.issuance",
                                "edgeward.certs.service", "edgeward.identity.service", "edgeward.attest.audit")) == []
        # nor X.509 code (about 1 MB): subject fields are checked by dotted OID, the policy's names live apart
        assert loaded(modules, ("cryptography.x509", "edgeward.certs.policy")) == []
    assert loaded(modules, ("rich",)) == []  # the CLI's renderer: commands that print tables load it
    assert loaded(modules, ("click",)) == []  # the daemon's commands are parsed without it (cli/daemon_cmds.py)
    # the keys wire is checked by hand: pydantic (about 8 MB and 0.1 s of start) is for the other services' models
    assert loaded(modules, ("pydantic", "pydantic_core")) == []


def test_run_loads_no_pydantic_nor_asn1crypto(tmp_path: Path) -> None:
    """Every wire is checked by hand and CSRs are reassembled as DER directly, so neither library is needed: not on
    the first start (which creates the local CA, the device identity and their certificates) nor on the next."""
    state = tmp_path / "state"
    args = ["run", "--state-dir", str(state), "--run-dir", str(state / "run")]
    for start in ("first", "second"):
        (tmp_path / start).mkdir()
        modules = modules_when_ready(args, tmp_path / start)
        assert "edgeward.identity.service" in modules and "edgeward.certs.service" in modules  # it did run them
        assert loaded(modules, ("pydantic", "pydantic_core", "asn1crypto", "click")) == [], start
        # what only systeminfo and a support bundle use is loaded when they are asked for
        assert loaded(modules, ("importlib.metadata", "zipfile")) == [], start
        # no EST server and no cloud configured: the EST client, the DPS and hub clients and their transports wait
        # for a device that uses them
        assert loaded(modules, ("edgeward.certs.est.client", "edgeward.certs.est.pkcs7", "edgeward.identity.dps",
                                "edgeward.identity.hub", "edgeward.identity.cloud",
                                "cryptography.hazmat.primitives.serialization.pkcs7")) == [], start
        # no [tpm] configured: the TPM's API, client, wire and quotes wait for a device that has one (its settings
        # reader is all that loads)
        assert loaded(modules, ("edgeward.tpm.api", "edgeward.tpm.client", "edgeward.tpm.wire",
                                "edgeward.tpm.service", "edgeward.attest.tpm_quote")) == [], start
