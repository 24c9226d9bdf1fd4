"""Findings of a "break this" pass over issue 13: each test does what the upstream client or contract does, against
the real daemon (``edgeward run``) over its Unix sockets, and states what the owner's source says must happen.

Sources are Azure/iot-identity-service (identityd, certd, keyd and their client crates) unless a test says otherwise.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests_unixsocket
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgeward.supervise import running_daemon

from .conftest import PROBLEM_SIGNS, url_of, wait_for

IDV = "api-version=2020-09-01"


@dataclass
class Device:
    run_dir: Path
    log_path: Path
    session: requests_unixsocket.Session

    def call(self, sock: str, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        r = self.session.request(method, url_of(self.run_dir / sock) + path, json=body, timeout=30)
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, r.text


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    """The daemon on embedded defaults plus local identities (aziot's ``[localid]``) and a local CA."""
    base = tmp_path_factory.mktemp("brk2")
    os.chmod(base, 0o755)
    config = base / "config.toml"
    config.write_text(textwrap.dedent("""\
        hostname = "brk-edge"

        [localid]
        domain_name = "example.local"

        [cert_issuance.local_ca]
        cert = "local-ca"
        pk = "local-ca"
        """))
    log_path = base / "daemon.log"
    run_dir = base / "run"
    with running_daemon(["run", "-c", str(config), "--state-dir", str(base / "state"), "--run-dir", str(run_dir)],
                        log_path=log_path) as proc:
        session = requests_unixsocket.Session()
        try:
            wait_for(run_dir / "identityd.sock", "identityd.sock")
            yield Device(run_dir, log_path, session)
        finally:
            session.close()
        assert proc.poll() is None, "the daemon died"
        problems = [line for line in log_path.read_text(errors="replace").splitlines()
                    if any(sign in line for sign in PROBLEM_SIGNS)]
        assert not problems, problems


def _leaf(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificates(pem.encode())[0]


def _eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_local_server_identity_is_also_a_client_certificate_as_aziot_issues_it(device: Device) -> None:
    """aziot-identity-client-async's create_local_identity sends ``{"type": "local", "moduleId", "localIdOpts":
    {"type": "x509", "attributes": "server"}}``. aziot-identity-common documents ``LocalIdAttr::Server`` as "TLS
    server certificate. Also has client attributes", and aziot-identityd's create_csr always asks for clientAuth
    ("required for EST client certificate renewal") and adds serverAuth for a server. A server local identity that
    is not a client certificate cannot be renewed by EST nor used as the module's client identity."""
    status, body = device.call("identityd.sock", "POST", f"/identities/modules?{IDV}",
                               {"type": "local", "moduleId": "brkserver",
                                "localIdOpts": {"type": "x509", "attributes": "server"}})
    assert status == 200, body
    usages = _eku(_leaf(body["spec"]["auth"]["certificate"]))
    assert usages == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}, usages


def test_local_client_identity_is_a_client_certificate_only(device: Device) -> None:
    """The default attributes (``client``): clientAuth only, as aziot-identityd's create_csr."""
    status, body = device.call("identityd.sock", "POST", f"/identities/modules?{IDV}",
                               {"type": "local", "moduleId": "brkclient", "localIdOpts": {"type": "x509"}})
    assert status == 200, body
    assert _eku(_leaf(body["spec"]["auth"]["certificate"])) == {ExtendedKeyUsageOID.CLIENT_AUTH}


_ = json  # kept for later findings
