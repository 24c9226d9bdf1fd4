"""IoT Edge 1.5's ``pkcs11:`` URIs for CA keys, as an operator writes them in config.toml, taking effect in the
daemon (``edgeward run``): ``[aziot_keys]`` names the library and base slot, and the local CA's key
(``[cert_issuance.local_ca] pk``) or the edge CA's (``[edge_ca] pk``) is an object on a SoftHSM2 token that the key
file was imported into and then deleted, so only the token can sign."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeward.testing.est_server import EstServer, issue_certificate
from tests.fixtures.config_daemon import daemon, edge_ca_of, make_ca, pkcs11_keys
from tests.fixtures.softhsm import make_token

pytestmark = pytest.mark.asyncio(loop_scope="session")




async def test_local_ca_key_in_a_pkcs11_token_signs_the_edge_ca(tmp_path: Path) -> None:
    hsm = make_token(tmp_path / "hsm", label="template-keys")
    local, _, cert_path, key_path = make_ca(tmp_path, "local-ca", "HSM local CA")
    uri = hsm.import_key(key_path, "local-ca", "0a01")
    config = tmp_path / "config.toml"
    config.write_text(f'hostname = "hsm-ca"\n\n{pkcs11_keys(hsm)}\n[cert_issuance.local_ca]\ncert = "file://{cert_path}"'
                      f'\npk = "{uri}"\n\n[edge_ca]\nmethod = "local_ca"\ncommon_name = "HSM-signed edge CA"\n')
    async with daemon(config, tmp_path, env=hsm.env()) as run:
        ca = await edge_ca_of(run)
    ca.verify_directly_issued_by(local)  # signed in the token: the key file no longer exists
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "HSM-signed edge CA"


async def test_edge_ca_key_in_a_pkcs11_token_is_the_one_its_cert_names(tmp_path: Path) -> None:
    """[edge_ca] cert (file) and pk (pkcs11:): `edgeward check` reads the public key from the token object and
    finds it is the edge CA certificate's."""
    hsm = make_token(tmp_path / "hsm", label="template-keys")
    cert, _, cert_path, key_path = make_ca(tmp_path, "edge-ca", "HSM edge CA")
    uri = hsm.import_key(key_path, "edge-ca", "0a02")
    config = tmp_path / "config.toml"
    config.write_text(f'hostname = "hsm-edge"\n\n{pkcs11_keys(hsm)}\n[edge_ca]\ncert = "file://{cert_path}"\n'
                      f'pk = "{uri}"\n')
    env = hsm.env()
    async with daemon(config, tmp_path, env=env) as run:
        assert await edge_ca_of(run) == cert
        checked = subprocess.run([sys.executable, "-m", "edgeward", "check", "--json", "-c", str(config),
                                  "--state-dir", str(tmp_path / "state"), "--run-dir", str(run)],
                                 capture_output=True, text=True, timeout=60, env=env)
    rows = {r["name"]: r for r in json.loads(checked.stdout)}
    assert rows["cert aziot-edged-ca"]["outcome"] == "ok", rows["cert aziot-edged-ca"]
    assert rows["cert aziot-edged-ca"]["detail"].startswith("matches its key")


@pytest.mark.parametrize("where", ["cert_issuance.est.auth", "edge_ca"])
async def test_est_identity_key_in_a_pkcs11_token_authenticates_the_enrollment(where: str, est_server: EstServer,
                                                                              tmp_path: Path) -> None:
    """identity_pk = "pkcs11:..." for the EST identity (shared, or the edge CA's own): the TLS client key that
    authenticates the edge CA's enrollment is the token's (no password is configured)."""
    hsm = make_token(tmp_path / "hsm", label="template-keys")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "est-edge")])).sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "est-id.pem", tmp_path / "est-id.key.pem"
    cert_path.write_bytes(issue_certificate(csr, est_server.ca_cert, est_server.ca_key, dt.timedelta(days=1))
                          .public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    uri = hsm.import_key(key_path, "est-id", "0a03")
    (tmp_path / "est-ca.pem").write_bytes(est_server.ca_pem)
    identity = f'identity_cert = "file://{cert_path}"\nidentity_pk = "{uri}"\n'
    head = (f'hostname = "hsm-est"\n\n{pkcs11_keys(hsm)}\n[cert_issuance.est]\n'
            f'trusted_certs = ["file://{tmp_path / "est-ca.pem"}"]\n')
    edge_ca = f'[edge_ca]\nmethod = "est"\ncommon_name = "HSM EST edge CA"\nurl = "{est_server.base_url}"\n'
    text = (head + "\n[cert_issuance.est.auth]\n" + identity + "\n" + edge_ca if where == "cert_issuance.est.auth"
            else head + "\n" + edge_ca + identity)
    config = tmp_path / "config.toml"
    config.write_text(text)
    async with daemon(config, tmp_path, env=hsm.env()) as run:
        ca = await edge_ca_of(run)
    ca.verify_directly_issued_by(est_server.ca_cert)
    assert est_server.enrollments == 1
