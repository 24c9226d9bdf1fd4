"""IoT Edge 1.5's EST keys, as an operator writes them in config.toml, taking effect in the daemon (``edgeward run``):
the edge CA is enrolled over EST (``[edge_ca] method = "est"``) with the shared ``[cert_issuance.est]`` settings
(trusted_certs, auth username/password, urls.default), with the edge CA's own url/username/password, with an EST
identity certificate already on the device (identity_cert/identity_pk files), or with a bootstrap identity that
first enrolls the EST identity. The edge CA is read back over the certs socket and checked against the real EST
server's CA, and the server says how it was authenticated."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeward.testing.est_server import EstServer, issue_certificate
from tests.fixtures.config_daemon import daemon, edge_ca_of, logged, until

pytestmark = pytest.mark.asyncio(loop_scope="session")


def client_identity(server: EstServer, base: Path, name: str) -> tuple[Path, Path]:
    """A client certificate the EST server's CA issued, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "est-edge")]))
           .sign(key, hashes.SHA256()))
    cert = issue_certificate(csr, server.ca_cert, server.ca_key, dt.timedelta(days=1))
    cert_path, key_path = base / f"{name}.pem", base / f"{name}.key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def est_config(how: str, server: EstServer, base: Path) -> str:
    ca = base / "est-ca.pem"
    ca.write_bytes(server.ca_pem)
    head = f'hostname = "est-edge"\n\n[cert_issuance.est]\ntrusted_certs = ["file://{ca}"]\n'
    edge_ca = '[edge_ca]\nmethod = "est"\ncommon_name = "EST edge CA"\n'
    if how == "shared":
        return head + textwrap.dedent(f"""
            [cert_issuance.est.auth]
            username = "{server.username}"
            password = "{server.password}"

            [cert_issuance.est.urls]
            default = "{server.base_url}"
        """) + edge_ca
    if how == "own":
        return head + edge_ca + (f'url = "{server.base_url}"\nusername = "{server.username}"\n'
                                 f'password = "{server.password}"\n')
    if how == "identity":
        cert, key = client_identity(server, base, "est-id")
        return head + textwrap.dedent(f"""
            [cert_issuance.est.auth]
            identity_cert = "file://{cert}"
            identity_pk = "file://{key}"

            [cert_issuance.est.urls]
            default = "{server.base_url}"
        """) + edge_ca
    if how == "own_identity":
        cert, key = client_identity(server, base, "edge-est-id")
        return head + edge_ca + (f'url = "{server.base_url}"\nidentity_cert = "file://{cert}"\n'
                                 f'identity_pk = "file://{key}"\n')
    if how == "own_bootstrap":
        cert, key = client_identity(server, base, "edge-est-bootstrap-id")
        return head + edge_ca + (f'url = "{server.base_url}"\nbootstrap_identity_cert = "file://{cert}"\n'
                                 f'bootstrap_identity_pk = "file://{key}"\n')
    assert how == "bootstrap"
    cert, key = client_identity(server, base, "est-bootstrap-id")
    return head + textwrap.dedent(f"""
        [cert_issuance.est.auth]
        bootstrap_identity_cert = "file://{cert}"
        bootstrap_identity_pk = "file://{key}"

        [cert_issuance.est.urls]
        default = "{server.base_url}"
    """) + edge_ca


@pytest.mark.parametrize("how", ["shared", "own", "identity", "bootstrap", "own_identity", "own_bootstrap"])
async def test_edge_ca_is_enrolled_over_est_as_the_config_says(how: str, est_server: EstServer,
                                                               tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(est_config(how, est_server, tmp_path))
    async with daemon(config, tmp_path) as run:
        ca = await edge_ca_of(run)
    ca.verify_directly_issued_by(est_server.ca_cert)
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "EST edge CA"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # the bootstrap identity enrolls the EST identity first, which then enrolls the edge CA
    assert est_server.enrollments == (2 if how.endswith("bootstrap") else 1)


async def test_edge_ca_over_est_with_a_wrong_password_is_not_issued(est_server: EstServer, tmp_path: Path) -> None:
    """The contrast: the password in the config is the one the EST server sees (a wrong one enrolls nothing)."""
    config = tmp_path / "config.toml"
    config.write_text(est_config("own", est_server, tmp_path).replace(est_server.password or "", "wrong-password"))
    log = tmp_path / "daemon.log"
    async with daemon(config, tmp_path):
        await until(logged(log, "renewal of 'aziot-edged-ca' failed"), log)
    assert "refused" in log.read_text() and est_server.enrollments == 0
