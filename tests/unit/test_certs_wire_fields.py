"""The certificates API's hand-written body checks against the pydantic models they replaced (kept here as the
oracle): any JSON object is accepted with the same values or refused with the same 422 message, and answers are
the same bytes. Also: a CSR signed through the keys API is the DER asn1crypto reassembled before."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asn1crypto import core as asn1_core
from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

from edgeward.certs import wire
from edgeward.certs.x509sign import sign_csr
from edgeward.keys.model import EcdsaDigest, RsaPkcs1
from tests.unit.wire_oracle import same_outcome


class _Body(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class IssuerBody(_Body):
    cert_id: str = Field(alias="certId")
    private_key_handle: str = Field(alias="privateKeyHandle", max_length=8192)


class CreateCertRequest(_Body):
    cert_id: str = Field(alias="certId")
    csr: str
    issuer: IssuerBody | None = None


class ImportCertRequest(_Body):
    pem: str = Field(max_length=256 * 1024)


class PemResponse(_Body):
    pem: str


NAMES = ["certId", "cert_id", "csr", "issuer", "pem", "privateKeyHandle", "private_key_handle", "other"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6),
                    st.sampled_from(["\ud800", "k\udc00", "h" * 8192, "h" * 8193, "p" * (256 * 1024),
                                     "p" * (256 * 1024 + 1), "\ud800" + "p" * (256 * 1024)]))
flat = st.dictionaries(st.sampled_from(NAMES), scalars, max_size=5)
bodies = st.dictionaries(st.sampled_from(NAMES), st.one_of(scalars, flat, st.lists(scalars, max_size=2)), max_size=6)


@pytest.mark.parametrize(("model", "ours"), [(CreateCertRequest, wire.CreateCertRequest.parse),
                                             (ImportCertRequest, wire.ImportCertRequest.parse)],
                         ids=["create", "import"])
@settings(max_examples=500, deadline=None)
@given(data=bodies)
@example(data={"certId": "c", "csr": "x", "issuer": {"cert_id": 1, "privateKeyHandle": "h" * 8193}})
@example(data={"cert_id": "c", "csr": "x", "issuer": {"certId": "i", "private_key_handle": "\ud800"}})
@example(data={"certId": 5, "issuer": []})
def test_certs_bodies_are_accepted_and_refused_as_the_pydantic_models_did(model: type[BaseModel], ours: Any,
                                                                        data: dict[str, Any]) -> None:
    same_outcome(model, ours, data)


@settings(max_examples=200, deadline=None)
@given(pem=st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30))
@example(pem="-----BEGIN CERTIFICATE-----\nMIIBkTCCATeg\n-----END CERTIFICATE-----\n")
@example(pem='"\\\x00\x1f\x7f\u2028\u00e9\U0001f512')
def test_certs_answers_are_the_bytes_pydantic_wrote(pem: str) -> None:
    raw = wire.PemResponse(pem).to_json()
    assert raw == PemResponse(pem=pem).model_dump_json(by_alias=True, exclude_none=True).encode()
    assert wire.PemResponse.parse(raw).pem == pem


@pytest.mark.parametrize("raw", [b"", b"[]", b"{}", b'{"pem": 5}'])
def test_certs_client_refuses_a_malformed_answer_as_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError, match="invalid response body"):
        wire.PemResponse.parse(raw)


class _LocalKeys:
    """The two calls sign_csr makes of the keys API, on an in-process key."""

    def __init__(self, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
        self.key = key

    async def sign(self, handle: str, mechanism: EcdsaDigest) -> bytes:
        assert isinstance(self.key, ec.EllipticCurvePrivateKey)
        from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

        h = hashes.SHA384() if self.key.curve.name == "secp384r1" else hashes.SHA256()
        return self.key.sign(mechanism.digest, ec.ECDSA(Prehashed(h)))

    async def encrypt(self, handle: str, mechanism: RsaPkcs1, digest_info: bytes) -> bytes:
        assert isinstance(self.key, rsa.RSAPrivateKey)
        n = self.key.public_key().public_numbers().n
        size = (n.bit_length() + 7) // 8
        block = b"\x00\x01" + b"\xff" * (size - 3 - len(digest_info)) + b"\x00" + digest_info
        d = self.key.private_numbers().d
        return pow(int.from_bytes(block, "big"), d, n).to_bytes(size, "big")


def _asn1crypto_csr(draft: bytes, public: Any, signature: bytes) -> bytes:
    """How sign_csr reassembled a CSR with asn1crypto before (the public key replaced, the signature given)."""
    parsed = asn1_csr.CertificationRequest.load(draft)
    info = parsed["certification_request_info"].copy()
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    info["subject_pk_info"] = asn1_keys.PublicKeyInfo.load(spki)
    return bytes(asn1_csr.CertificationRequest({"certification_request_info": info,
                                                "signature_algorithm": parsed["signature_algorithm"],
                                                "signature": asn1_core.OctetBitString(signature)}).dump(force=True))


@pytest.mark.parametrize("kind", ["p256", "p384", "rsa"])
@pytest.mark.parametrize("extensions", [False, True])
def test_csr_der_is_what_asn1crypto_wrote(kind: str, extensions: bool) -> None:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        ec.generate_private_key(ec.SECP256R1()) if kind == "p256" else
        ec.generate_private_key(ec.SECP384R1()) if kind == "p384" else
        rsa.generate_private_key(public_exponent=65537, key_size=2048))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "device-" + "é" * 20), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "o")]))
    if extensions:
        builder = (builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(f"h{i}.example") for i in range(20)]),
                                         critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True))
    csr = asyncio.run(sign_csr(builder, _LocalKeys(key), "handle", key.public_key()))  # type: ignore[arg-type]
    assert csr.is_signature_valid and csr.public_key() == key.public_key()
    der = csr.public_bytes(serialization.Encoding.DER)
    draft = builder.sign(ec.generate_private_key(ec.SECP384R1() if kind == "p384" else ec.SECP256R1())
                         if kind != "rsa" else rsa.generate_private_key(public_exponent=65537, key_size=1024),
                         hashes.SHA384() if kind == "p384" else hashes.SHA256())
    assert der == _asn1crypto_csr(draft.public_bytes(serialization.Encoding.DER), key.public_key(),
                                  csr.signature)
