"""IoT Edge 1.5's EST bootstrap identity with its key in a PKCS#11 token, as an operator writes it in config.toml
(``bootstrap_identity_pk = "pkcs11:..."``, shared under ``[cert_issuance.est.auth]`` or the edge CA's own under
``[edge_ca]``), taking effect in the daemon (``edgeward run``): the key file is imported into a SoftHSM2 token and
deleted, so the TLS client signature the real EST server checks can only come from the token."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from cryptography import x509

from edgeward.testing.est_server import EstServer
from tests.e2e.test_template_est_keys import client_identity
from tests.fixtures.config_daemon import daemon, edge_ca_of, logged, pkcs11_keys, until
from tests.fixtures.softhsm import SoftHsm, make_token

pytestmark = pytest.mark.asyncio(loop_scope="session")


def bootstrap_config(where: str, server: EstServer, base: Path, cert: Path, uri: str, hsm: SoftHsm) -> str:
    ca = base / "est-ca.pem"
    ca.write_bytes(server.ca_pem)
    head = f'hostname = "est-edge"\n\n{pkcs11_keys(hsm)}' + textwrap.dedent(f"""
        [cert_issuance.est]
        trusted_certs = ["file://{ca}"]
    """)
    edge_ca = '[edge_ca]\nmethod = "est"\ncommon_name = "EST edge CA"\n'
    if where == "own":
        return head + edge_ca + (f'url = "{server.base_url}"\nbootstrap_identity_cert = "file://{cert}"\n'
                                 f'bootstrap_identity_pk = "{uri}"\n')
    assert where == "shared"
    return head + textwrap.dedent(f"""
        [cert_issuance.est.auth]
        bootstrap_identity_cert = "file://{cert}"
        bootstrap_identity_pk = "{uri}"

        [cert_issuance.est.urls]
        default = "{server.base_url}"
    """) + edge_ca


@pytest.mark.parametrize("key_ok", [True, False], ids=["its-key", "another-key"])
@pytest.mark.parametrize("where", ["shared", "own"])
async def test_est_bootstrap_key_in_a_pkcs11_token_enrolls_the_edge_ca(where: str, key_ok: bool,
                                                                      est_server: EstServer, tmp_path: Path) -> None:
    """The bootstrap certificate authenticates the first enrollment (the EST identity) only over a TLS connection
    signed by its key; with another key in the token under that URI, nothing is enrolled."""
    hsm = make_token(tmp_path / "hsm", label="bootstrap-keys")
    cert, key = client_identity(est_server, tmp_path, "est-bootstrap-id")
    if not key_ok:
        (tmp_path / "other").mkdir()
        _, key = client_identity(est_server, tmp_path / "other", "est-bootstrap-id")
    uri = hsm.import_key(key, "est-bootstrap-key", "0b02")
    config = tmp_path / "config.toml"
    config.write_text(bootstrap_config(where, est_server, tmp_path, cert, uri, hsm))
    log = tmp_path / "daemon.log"
    async with daemon(config, tmp_path, env=hsm.env()) as run:
        if key_ok:
            ca = await edge_ca_of(run)
        else:
            await until(logged(log, "renewal of 'aziot-edged-ca' failed"), log)
    assert not key.exists()  # only the token held the key
    if key_ok:
        ca.verify_directly_issued_by(est_server.ca_cert)
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        # the bootstrap identity enrolled the EST identity, which then enrolled the edge CA
        assert est_server.enrollments == 2
    else:
        # the daemon finds the token key is not the bootstrap certificate's and fails closed, saying so
        assert "is not for the key" in log.read_text(), log.read_text()
        assert est_server.enrollments == 0, log.read_text()
