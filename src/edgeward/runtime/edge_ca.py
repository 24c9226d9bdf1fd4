"""The edge CA: the certificate authority that issues module server and identity certificates, and the trust
bundle modules are told to trust.

The CA certificate itself is a managed certificate of the certs service (self-signed quickstart, local CA or EST,
renewed by its renewal engine); its key stays in the keys service. Leaf keys are generated per request and handed
to the module once; they are never stored.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..certs.api import CertsApi
from ..certs.issuance import IssuerRef, sign_leaf
from ..certs.policy import EDGE_CA_CERT_ID, IssuancePolicy, Kind
from ..certs.x509sign import handle_public_key
from ..http.errors import HttpError
from ..keys.api import KeysApi
from .edge_ca_config import EDGE_CA_KEY_ID

__all__ = ["EDGE_CA_CERT_ID", "EDGE_CA_KEY_ID", "EdgeCa", "IssuedCert"]

TRUST_BUNDLE_ID = "aziot-edged-trust-bundle"  # where `config apply` puts trust_bundle_cert
MANIFEST_TRUST_BUNDLE_ID = "aziot-edged-manifest-trust-bundle"
MAX_LEAF_LIFETIME = dt.timedelta(days=90)


class EdgeCaUnavailable(HttpError):
    status = 503


@dataclass(frozen=True)
class IssuedCert:
    private_key_pem: str
    certificate_pem: str  # leaf first, then the edge CA chain
    expiration: dt.datetime


def _pems(chain: list[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)


class EdgeCa:
    def __init__(self, keys: KeysApi, certs: CertsApi, *, cert_id: str = EDGE_CA_CERT_ID,
                 key_id: str = EDGE_CA_KEY_ID) -> None:
        self.keys = keys
        self.certs = certs
        self.cert_id = cert_id
        self.key_id = key_id

    async def chain(self) -> list[x509.Certificate]:
        try:
            pem = await self.certs.get_cert(self.cert_id)
        except HttpError as e:
            if e.status == 404:
                raise EdgeCaUnavailable("the edge CA certificate is not issued yet; retry shortly") from None
            raise
        chain = x509.load_pem_x509_certificates(pem.encode())
        if chain[0].not_valid_after_utc <= dt.datetime.now(dt.UTC):
            raise EdgeCaUnavailable("the edge CA certificate has expired and is being renewed; retry shortly")
        return chain

    async def _stored(self, cert_id: str) -> list[x509.Certificate]:
        try:
            return x509.load_pem_x509_certificates((await self.certs.get_cert(cert_id)).encode())
        except HttpError as e:
            if e.status == 404:
                return []
            raise

    async def manifest_trust_bundle(self) -> str:
        """`manifest_trust_bundle_cert`, as `config apply` stored it in the certs service; empty when none."""
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode()
                       for c in await self._stored(MANIFEST_TRUST_BUNDLE_ID))

    async def trust_bundle(self) -> str:
        """The edge CA's root (the last certificate of its chain) plus the configured `trust_bundle_cert` CAs,
        without duplicates, so a module trusts exactly what can issue the certificates it will see. Read on each
        call: a renewed CA or a changed bundle is what the next caller gets."""
        chain = await self.chain()
        seen: set[bytes] = set()
        out: list[str] = []
        for cert in [chain[-1], *await self._stored(TRUST_BUNDLE_ID)]:
            der = cert.public_bytes(serialization.Encoding.DER)
            if der not in seen:
                seen.add(der)
                out.append(cert.public_bytes(serialization.Encoding.PEM).decode())
        return "".join(out)

    async def issue(self, common_name: str, *, server: bool, dns_names: tuple[str, ...] = (),
                    expiration: dt.datetime | None = None) -> IssuedCert:
        """A leaf certificate and a fresh P-256 key; the lifetime is what the caller asked for, capped at 90 days
        and at the edge CA's own expiry (``sign_leaf`` enforces the latter)."""
        now = dt.datetime.now(dt.UTC)
        lifetime = MAX_LEAF_LIFETIME if expiration is None else min(expiration - now, MAX_LEAF_LIFETIME)
        if lifetime <= dt.timedelta(0):
            raise HttpError("expiration must be in the future", 400)
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for name in dict.fromkeys(dns_names):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                names.append(x509.DNSName(name))
        # The same rules as every certd leaf: CA:FALSE (critical), digitalSignature, serverAuth for a server cert,
        # clientAuth for an identity cert; the names are the ones the workload API decided this module may hold.
        kind: Kind = "server" if server else "identity"
        policy = IssuancePolicy(f"workload {kind} cert {common_name}", kind)
        extensions = policy.extensions(key.public_key(), policy.grant_for(names))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        # The CA may be renewed (with a new key) while we sign: its new certificate lands a moment before its new
        # key is moved into place. A leaf is only handed out once it verifies against the chain it ships with.
        for _ in range(10):
            chain = await self.chain()
            try:
                handle = await self.keys.load_key_pair(self.key_id)
                issuer = IssuerRef(chain[0], handle, await handle_public_key(self.keys, handle))
                leaf = await sign_leaf(self.keys, subject, key.public_key(), extensions, issuer=issuer,
                                       lifetime=lifetime)
                leaf.verify_directly_issued_by(chain[0])
                break
            except (ValueError, TypeError, InvalidSignature):
                pass  # certificate and key of the CA were caught mid-rotation
            except HttpError as e:
                if e.status not in (401, 404):  # a handle to the key just replaced, or the moment before the move
                    raise
            await asyncio.sleep(0.05)
        else:
            raise EdgeCaUnavailable("the edge CA is being renewed; retry shortly")
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        return IssuedCert(key_pem, _pems([leaf, *chain]), leaf.not_valid_after_utc)
