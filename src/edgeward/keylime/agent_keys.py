"""The agent's two software keys, made once and kept: the verifier pins both when the tenant adds the agent.

- the payload key (RSA-2048, "NK"): the tenant and verifier encrypt the U and V key halves to it, and its public PEM
  is what PCR 16 binds into every quote (keylime/tpm/tpm_main.py:_check_data_pcr). A new one after a restart fails
  the next quote with ``invalid_pcr_16``.
- the mTLS key and its self-signed certificate (EC P-256, CN = the agent's UUID): sent to the registrar as
  ``mtls_cert``; the verifier trusts exactly that certificate, so a new one after a restart fails every connection
  until ``keylime_tenant -c update``.

They are files in the agent's private state directory (0600), not keys-service keys: the TLS server needs the key
in its ssl context, and the payload key decrypts what the tenant sends to this agent and nothing else.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ..fsutil import atomic_write, private_dir

__all__ = ["AgentKeys", "load_or_create_keys"]

_LIFETIME = datetime.timedelta(days=3650)  # the verifier pins the certificate itself; expiry would only strand it


@dataclass(frozen=True)
class AgentKeys:
    payload_key: rsa.RSAPrivateKey = field(repr=False)
    payload_pubkey_pem: str  # SPKI PEM, exactly the text PCR 16 binds
    tls_cert: Path
    tls_key: Path = field(repr=False)
    tls_cert_pem: str


def _pem_private(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _payload_key(path: Path) -> rsa.RSAPrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} does not hold an RSA key")
        return key
    key = rsa.generate_private_key(65537, 2048)
    atomic_write(path, _pem_private(key))
    return key


def _tls_cert(cert_path: Path, key_path: Path, agent_uuid: str, contact: str) -> str:
    if cert_path.exists() and key_path.exists():
        return cert_path.read_text()
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent_uuid)])
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    if contact != "127.0.0.1":
        names.append(x509.IPAddress(ipaddress.ip_address(contact)))
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _LIFETIME)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    atomic_write(key_path, _pem_private(key))
    atomic_write(cert_path, pem, mode=0o644)
    return pem.decode()


def load_or_create_keys(home: Path, agent_uuid: str, contact: str) -> AgentKeys:
    private_dir(home)
    payload = _payload_key(home / "payload-key.pem")
    pub = payload.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    cert_path, key_path = home / "mtls-cert.pem", home / "mtls-key.pem"
    cert_pem = _tls_cert(cert_path, key_path, agent_uuid, contact)
    return AgentKeys(payload, pub, cert_path, key_path, cert_pem)
