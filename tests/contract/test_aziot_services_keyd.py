"""aziot-keyd's contract against Edgeward's keys service in the real daemon over keyd.sock. Each request is the
body `key/aziot-key-client-async/src/lib.rs` builds from `key/aziot-key-common-http/src/lib.rs` (camelCase fields,
bytes as base64, `keyBytes: null` when generating, `usage` as "derive,sign", algorithm and parameters as an adjacently
tagged enum that omits `parameters` for RSA-PKCS1 / RSA-NO-PADDING), and each success code the one the client takes:
200 (`parse_expect_ok`) for every JSON answer, 204 (`no_content_response`) for move and the deletes. Error codes are
`key/aziot-keyd/src/http/*.rs`: a key the library cannot find is `InvalidParameter("id")` -> 400, a move onto itself
400, a POST without a body 400 "missing request body", an unknown route 404, no api-version 400."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from tests.contract._aziot import Device, call, device

pytestmark = pytest.mark.asyncio(loop_scope="session")

__all__ = ["device"]

V = "api-version=2021-05-01"
P256_OID_DER = bytes.fromhex("06082a8648ce3d030107")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _id(prefix: str) -> str:
    return f"contract-{prefix}-{uuid.uuid4().hex[:8]}"


async def test_keyd_key_pair_routes_as_the_key_client_calls_them(device: Device) -> None:
    key_id = _id("kp")
    for version in ("2020-09-01", "2021-05-01"):
        status, body = await call(device.keyd, "POST", f"/keypair?api-version={version}",
                                  {"keyId": key_id, "preferredAlgorithms": "ec-p256:rsa-2048:*"})
        assert status == 200 and set(body) == {"keyHandle"}, body
    handle = body["keyHandle"]
    status, body = await call(device.keyd, "GET", f"/keypair/{key_id}?{V}")
    assert status == 200 and set(body) == {"keyHandle"}, body
    answers = {}
    for name in ("algorithm", "ec-curve-oid", "ec-point"):
        status, body = await call(device.keyd, "POST", f"/parameters/{name}?{V}", {"keyHandle": handle})
        assert status == 200 and set(body) == {"value"}, (name, body)
        answers[name] = body["value"]
    assert answers["algorithm"] == "ECDSA"
    assert base64.b64decode(answers["ec-curve-oid"]) == P256_OID_DER
    point = base64.b64decode(answers["ec-point"])
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    digest = hashlib.sha256(b"contract").digest()
    status, body = await call(device.keyd, "POST", f"/sign?{V}", {
        "keyHandle": handle, "algorithm": "ECDSA", "parameters": {"digest": _b64(digest)}})
    assert status == 200 and set(body) == {"signature"}, body
    public.verify(base64.b64decode(body["signature"]), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))

    moved = _id("kp-moved")
    assert await call(device.keyd, "POST", f"/keypair/{moved}?{V}", {"from": key_id}) == (204, None)
    status, body = await call(device.keyd, "POST", f"/keypair/{moved}?{V}", {"from": moved})
    assert status == 400 and "identical" in body["message"]
    status, body = await call(device.keyd, "GET", f"/keypair/{moved}?{V}")
    assert status == 200
    assert await call(device.keyd, "DELETE", f"/keypair?{V}", {"keyHandle": body["keyHandle"]}) == (204, None)


async def test_keyd_load_of_a_missing_key_is_a_400_as_aziot_answers(device: Device) -> None:
    """aziot-keys answers `err_invalid_parameter("id", "not found")`, which keyd maps to 400."""
    for path in ("/keypair/contract-never-made", "/key/contract-never-made"):
        status, body = await call(device.keyd, "GET", f"{path}?{V}")
        assert status == 400, (path, body)
        assert 'parameter "id"' in body["message"] and "not found" in body["message"], body


async def test_keyd_symmetric_key_routes_as_the_key_client_calls_them(device: Device) -> None:
    key_id = _id("k")
    secret = bytes(range(32))
    status, body = await call(device.keyd, "POST", f"/key?{V}",
                              {"keyId": key_id, "keyBytes": _b64(secret), "usage": "derive,sign"})
    assert status == 200 and set(body) == {"keyHandle"}, body
    status, body = await call(device.keyd, "GET", f"/key/{key_id}?{V}")
    assert status == 200, body
    handle = body["keyHandle"]
    status, body = await call(device.keyd, "POST", f"/sign?{V}", {
        "keyHandle": handle, "algorithm": "HMAC-SHA256", "parameters": {"message": _b64(b"sr\n1700000000")}})
    assert status == 200, body
    assert base64.b64decode(body["signature"]) == hmac.new(secret, b"sr\n1700000000", hashlib.sha256).digest()
    status, body = await call(device.keyd, "POST", f"/derivedkey?{V}",
                              {"baseKeyHandle": handle, "derivationData": _b64(b"module:gen")})
    assert status == 200 and set(body) == {"keyHandle"}, body
    status, exported = await call(device.keyd, "POST", f"/derivedkey/export?{V}", {"keyHandle": body["keyHandle"]})
    assert status == 200 and set(exported) == {"key"}, exported
    assert base64.b64decode(exported["key"]) == hmac.new(secret, b"module:gen", hashlib.sha256).digest()
    assert await call(device.keyd, "DELETE", f"/key?{V}", {"keyHandle": handle}) == (204, None)

    generated = _id("k-gen")
    status, body = await call(device.keyd, "POST", f"/key?{V}",
                              {"keyId": generated, "keyBytes": None, "usage": "encrypt"})
    assert status == 200, body
    handle = body["keyHandle"]
    iv, aad = b"\x01" * 12, b"contract-aad"
    status, body = await call(device.keyd, "POST", f"/encrypt?{V}", {
        "keyHandle": handle, "algorithm": "AEAD", "parameters": {"iv": _b64(iv), "aad": _b64(aad)},
        "plaintext": _b64(b"secret data")})
    assert status == 200 and set(body) == {"ciphertext"}, body
    status, body = await call(device.keyd, "POST", f"/decrypt?{V}", {
        "keyHandle": handle, "algorithm": "AEAD", "parameters": {"iv": _b64(iv), "aad": _b64(aad)},
        "ciphertext": body["ciphertext"]})
    assert (status, body) == (200, {"plaintext": _b64(b"secret data")})


async def test_keyd_rsa_modes_without_a_parameters_field(device: Device) -> None:
    """`#[serde(tag = "algorithm", content = "parameters")]` on a unit variant: `{"algorithm": "RSA-PKCS1"}`.
    aziot-keys' key-pair "encrypt" is the private-key operation (its OpenSSL engine signs with it), and its decrypt
    takes only AEAD: RSA decrypt is an invalid parameter, 400."""
    key_id = _id("rsa")
    status, body = await call(device.keyd, "POST", f"/keypair?{V}", {"keyId": key_id, "preferredAlgorithms": "rsa-2048"})
    assert status == 200, body
    handle = body["keyHandle"]
    status, alg = await call(device.keyd, "POST", f"/parameters/algorithm?{V}", {"keyHandle": handle})
    assert (status, alg) == (200, {"value": "RSA"})
    numbers = []
    for name in ("rsa-modulus", "rsa-exponent"):
        status, value = await call(device.keyd, "POST", f"/parameters/{name}?{V}", {"keyHandle": handle})
        assert status == 200, (name, value)
        numbers.append(int.from_bytes(base64.b64decode(value["value"]), "big"))
    public = rsa.RSAPublicNumbers(numbers[1], numbers[0]).public_key()
    status, body = await call(device.keyd, "POST", f"/encrypt?{V}",
                              {"keyHandle": handle, "algorithm": "RSA-PKCS1", "plaintext": _b64(b"hi")})
    assert status == 200 and set(body) == {"ciphertext"}, body
    recovered = public.recover_data_from_signature(base64.b64decode(body["ciphertext"]), padding.PKCS1v15(), None)
    assert recovered == b"hi"
    status, answer = await call(device.keyd, "POST", f"/decrypt?{V}",
                                {"keyHandle": handle, "algorithm": "RSA-PKCS1", "ciphertext": body["ciphertext"]})
    assert status == 400, answer


async def test_keyd_generic_http_codes_are_aziots(device: Device) -> None:
    assert (await call(device.keyd, "GET", "/keypair/x"))[0] == 400
    assert (await call(device.keyd, "GET", "/keypair/x?api-version=2099-01-01"))[0] == 400
    assert (await call(device.keyd, "GET", f"/nowhere?{V}"))[0] == 404
    for path in ("/sign", "/keypair", "/key", "/encrypt", "/decrypt", "/derivedkey", "/derivedkey/export",
                 "/parameters/algorithm"):
        status, body = await call(device.keyd, "POST", f"{path}?{V}")
        assert status == 400 and "missing request body" in body["message"], (path, body)
    assert (await call(device.keyd, "POST", f"/key?{V}", {"keyId": "x", "usage": "fly"}))[0] == 422
