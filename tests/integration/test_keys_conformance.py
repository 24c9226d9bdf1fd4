"""One conformance suite for every key backend (software; PKCS#11 on SoftHSM2 and on tpm2-pkcs11 behind tpm2-abrmd;
the native TPM backend on swtpm), driven through the real HTTP API over a Unix socket. Every signature is verified
with `cryptography`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgeward.http.errors import HttpError
from edgeward.keys.backends.rsaraw import pad_pkcs1_type1
from edgeward.keys.handles import HandleClaims, KeyHandleCodec
from edgeward.keys.model import (
    Aead,
    EcdsaDigest,
    EcdsaMessage,
    HashAlg,
    HmacSha256,
    KeyKind,
    RsaNoPadding,
    RsaPkcs1,
    RsaPss,
)
from tests.fixtures.keys import KeysEnv

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def public_key(env: KeysEnv, handle: str) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    c = env.client
    algorithm = await c.get_key_pair_public_parameter(handle, "algorithm")
    if algorithm == "ECDSA":
        oid = base64.b64decode(await c.get_key_pair_public_parameter(handle, "ec-curve-oid"))
        curve = {bytes.fromhex("06082a8648ce3d030107"): ec.SECP256R1(),
                 bytes.fromhex("06052b81040022"): ec.SECP384R1()}[oid]
        point = base64.b64decode(await c.get_key_pair_public_parameter(handle, "ec-point"))
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    assert algorithm == "RSA"
    n = int.from_bytes(base64.b64decode(await c.get_key_pair_public_parameter(handle, "rsa-modulus")), "big")
    e = int.from_bytes(base64.b64decode(await c.get_key_pair_public_parameter(handle, "rsa-exponent")), "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


async def expect_status(status: int, coro: object, fragment: str = "") -> HttpError:
    with pytest.raises(HttpError) as info:
        await coro  # type: ignore[misc]
    assert info.value.status == status, info.value.message
    assert fragment in info.value.message
    return info.value


@pytest.mark.parametrize(("alg", "curve"), [("ec-p256", ec.SECP256R1), ("ec-p384", ec.SECP384R1)])
async def test_ecdsa_key_pair_signs_digests_and_messages(keys_env: KeysEnv, alg: str, curve: type) -> None:
    handle = await keys_env.client.create_key_pair_if_not_exists(keys_env.new_id(), alg)
    pub = await public_key(keys_env, handle)
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert isinstance(pub.curve, curve)
    message = b"edge telemetry"
    for h, hash_alg in ((hashlib.sha256, hashes.SHA256()), (hashlib.sha384, hashes.SHA384())):
        der = await keys_env.client.sign(handle, EcdsaDigest(h(message).digest()))
        pub.verify(der, message, ec.ECDSA(hash_alg))
    der = await keys_env.client.sign(handle, EcdsaMessage(message, HashAlg.SHA256))
    pub.verify(der, message, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        pub.verify(der, b"other message", ec.ECDSA(hashes.SHA256()))


async def test_rsa_key_pair_signs_pss_and_does_private_encryption(keys_env: KeysEnv) -> None:
    handle = await keys_env.client.create_key_pair_if_not_exists(keys_env.new_id(), "rsa-2048")
    pub = await public_key(keys_env, handle)
    assert isinstance(pub, rsa.RSAPublicKey)
    assert pub.key_size == 2048
    sig = await keys_env.client.sign(handle, RsaPss(b"firmware image", prehashed=False))
    pub.verify(sig, b"firmware image", padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH),
               hashes.SHA256())
    sig = await keys_env.client.sign(handle, RsaPss(hashlib.sha384(b"x").digest(), prehashed=True, hash=HashAlg.SHA384))
    pub.verify(sig, b"x", padding.PSS(padding.MGF1(hashes.SHA384()), padding.PSS.DIGEST_LENGTH), hashes.SHA384())

    numbers = pub.public_numbers()
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + hashlib.sha256(b"tls").digest()
    out = await keys_env.client.encrypt(handle, RsaPkcs1(), digest_info)
    assert len(out) == 256
    assert pow(int.from_bytes(out, "big"), numbers.e, numbers.n).to_bytes(256, "big") == pad_pkcs1_type1(digest_info, 256)
    # ...which is exactly an RSASSA-PKCS1-v1_5 signature:
    pub.verify(out, b"tls", padding.PKCS1v15(), hashes.SHA256())

    block = b"\x00" + secrets.token_bytes(255)
    raw = await keys_env.client.encrypt(handle, RsaNoPadding(), block)
    assert pow(int.from_bytes(raw, "big"), numbers.e, numbers.n).to_bytes(256, "big") == block
    await expect_status(400, keys_env.client.encrypt(handle, RsaNoPadding(), b"short"), "exactly 256 bytes")
    await expect_status(400, keys_env.client.encrypt(handle, RsaPkcs1(), b"x" * 250), "too long")


async def test_preferred_algorithms_fall_through_to_what_the_backend_supports(keys_env: KeysEnv) -> None:
    handle = await keys_env.client.create_key_pair_if_not_exists(keys_env.new_id(), "nonsense:ec-p256:*")
    assert await keys_env.client.get_key_pair_public_parameter(handle, "algorithm") == "ECDSA"
    await expect_status(400, keys_env.client.create_key_pair_if_not_exists(keys_env.new_id(), "dsa-1024"),
                        "names no supported algorithm")


async def test_rsa_4096_where_the_backend_has_it_else_the_next_preference(keys_env: KeysEnv) -> None:
    handle = await keys_env.client.create_key_pair_if_not_exists(keys_env.new_id(), "rsa-4096:ec-p256")
    pub = await public_key(keys_env, handle)
    if keys_env.kind in ("tpm", "tpm2pkcs11"):  # swtpm has no 4096-bit RSA: the next preference is used
        assert isinstance(pub, ec.EllipticCurvePublicKey)
    else:
        assert isinstance(pub, rsa.RSAPublicKey)
        assert pub.key_size == 4096
    digest = hashlib.sha256(b"m").digest()
    if isinstance(pub, rsa.RSAPublicKey):
        sig = await keys_env.client.sign(handle, RsaPss(digest, prehashed=True))
        pub.verify(sig, b"m", padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH), hashes.SHA256())
    else:
        pub.verify(await keys_env.client.sign(handle, EcdsaDigest(digest)), b"m", ec.ECDSA(hashes.SHA256()))


async def test_create_is_idempotent_and_load_returns_the_same_key(keys_env: KeysEnv) -> None:
    key_id = keys_env.new_id()
    h1 = await keys_env.client.create_key_pair_if_not_exists(key_id, "ec-p256")
    h2 = await keys_env.client.create_key_pair_if_not_exists(key_id, "rsa-2048")
    h3 = await keys_env.client.load_key_pair(key_id)
    points = {await keys_env.client.get_key_pair_public_parameter(h, "ec-point") for h in (h1, h2, h3)}
    assert len(points) == 1
    await expect_status(404, keys_env.client.load_key_pair(keys_env.new_id("missing")), "not found")


async def test_parameters_refuse_what_does_not_apply(keys_env: KeysEnv) -> None:
    handle = await keys_env.client.create_key_pair_if_not_exists(keys_env.new_id(), "ec-p256")
    await expect_status(400, keys_env.client.get_key_pair_public_parameter(handle, "rsa-modulus"), "does not apply")
    await expect_status(400, keys_env.client.get_key_pair_public_parameter(handle, "private-key"), "unknown parameter")


async def test_move_renames_the_key_and_invalidates_old_handles(keys_env: KeysEnv) -> None:
    src, dst = keys_env.new_id("src"), keys_env.new_id("dst")
    old = await keys_env.client.create_key_pair_if_not_exists(src, "ec-p256")
    point = await keys_env.client.get_key_pair_public_parameter(old, "ec-point")
    existing_dst = await keys_env.client.create_key_pair_if_not_exists(dst, "ec-p256")
    await keys_env.client.move_key_pair(src, dst)
    moved = await keys_env.client.load_key_pair(dst)
    assert await keys_env.client.get_key_pair_public_parameter(moved, "ec-point") == point
    await expect_status(404, keys_env.client.load_key_pair(src))
    await expect_status(401, keys_env.client.sign(old, EcdsaDigest(b"\x01" * 32)), "no longer exists")
    await expect_status(401, keys_env.client.sign(existing_dst, EcdsaDigest(b"\x01" * 32)), "replaced")
    await expect_status(404, keys_env.client.move_key_pair(keys_env.new_id("none"), dst), "not found")


async def test_deleted_or_recreated_keys_refuse_old_handles(keys_env: KeysEnv) -> None:
    key_id = keys_env.new_id()
    handle = await keys_env.client.create_key_pair_if_not_exists(key_id, "ec-p256")
    await keys_env.client.delete_key_pair(handle)
    await expect_status(401, keys_env.client.sign(handle, EcdsaDigest(b"\x01" * 32)), "no longer exists")
    await expect_status(404, keys_env.client.load_key_pair(key_id))
    await keys_env.client.create_key_pair_if_not_exists(key_id, "ec-p256")
    await expect_status(401, keys_env.client.sign(handle, EcdsaDigest(b"\x01" * 32)), "replaced")

    sym = await keys_env.client.create_key_if_not_exists(keys_env.new_id(), "sign")
    await keys_env.client.delete_key(sym)
    await expect_status(401, keys_env.client.sign(sym, HmacSha256(b"m")), "no longer exists")


async def test_imported_hmac_key_and_derived_keys_match_reference(keys_env: KeysEnv) -> None:
    key = secrets.token_bytes(32)
    handle = await keys_env.client.import_key(keys_env.new_id(), key, "derive,sign")
    assert await keys_env.client.sign(handle, HmacSha256(b"msg")) == hmac.new(key, b"msg", hashlib.sha256).digest()
    derived = await keys_env.client.create_derived_key(handle, b"module1:gen1:primary")
    expected = hmac.new(key, b"module1:gen1:primary", hashlib.sha256).digest()
    assert await keys_env.client.export_derived_key(derived) == expected
    assert await keys_env.client.sign(derived, HmacSha256(b"sas")) == hmac.new(expected, b"sas", hashlib.sha256).digest()
    iv = secrets.token_bytes(12)
    ct = await keys_env.client.encrypt(derived, Aead(iv, b"aad"), b"secret")
    assert ct == b"\x02" + AESGCM(expected).encrypt(iv, b"secret", b"aad")
    assert await keys_env.client.decrypt(derived, Aead(iv, b"aad"), ct) == b"secret"


async def test_a_derived_key_follows_its_master_when_the_master_is_replaced(keys_env: KeysEnv) -> None:
    """The service remembers derived keys between signs; a master deleted and imported again under the same id
    must never sign with the old one's derived key (the old handle is refused, a new one signs with the new)."""
    key_id, data = keys_env.new_id(), b"module1:gen1:primary"
    old = await keys_env.client.import_key(key_id, b"\x01" * 32, "derive")
    old_derived = await keys_env.client.create_derived_key(old, data)
    old_key = hmac.new(b"\x01" * 32, data, hashlib.sha256).digest()
    assert await keys_env.client.sign(old_derived, HmacSha256(b"m")) == hmac.new(old_key, b"m", hashlib.sha256).digest()
    await keys_env.client.delete_key(old)
    await expect_status(401, keys_env.client.sign(old_derived, HmacSha256(b"m")))
    new = await keys_env.client.import_key(key_id, b"\x02" * 32, "derive")
    await expect_status(401, keys_env.client.sign(old_derived, HmacSha256(b"m")))
    new_key = hmac.new(b"\x02" * 32, data, hashlib.sha256).digest()
    derived = await keys_env.client.create_derived_key(new, data)
    assert await keys_env.client.sign(derived, HmacSha256(b"m")) == hmac.new(new_key, b"m", hashlib.sha256).digest()
    assert await keys_env.client.export_derived_key(derived) == new_key


async def test_generated_symmetric_keys_work_and_usage_is_enforced(keys_env: KeysEnv) -> None:
    signer = await keys_env.client.create_key_if_not_exists(keys_env.new_id(), "sign")
    mac1 = await keys_env.client.sign(signer, HmacSha256(b"m"))
    assert mac1 == await keys_env.client.sign(signer, HmacSha256(b"m"))
    assert len(mac1) == 32
    # as in aziot, "sign" and "derive" are one usage: an HMAC key does both
    derived = await keys_env.client.create_derived_key(signer, b"x")
    assert len(await keys_env.client.export_derived_key(derived)) == 32
    await expect_status(400, keys_env.client.encrypt(signer, Aead(b"\x00" * 12, b""), b"x"), "usage 'encrypt'")

    enc = await keys_env.client.create_key_if_not_exists(keys_env.new_id(), "encrypt")
    await expect_status(400, keys_env.client.sign(enc, HmacSha256(b"m")), "is an encryption key")
    await expect_status(400, keys_env.client.create_derived_key(enc, b"x"), "is an encryption key")
    iv = secrets.token_bytes(12)
    ct = await keys_env.client.encrypt(enc, Aead(iv, b"hdr"), b"module secret")
    assert ct[0] == 0x02
    assert len(ct) == 1 + len(b"module secret") + 16
    assert await keys_env.client.decrypt(enc, Aead(iv, b"hdr"), ct) == b"module secret"
    tampered = ct[:-1] + bytes([ct[-1] ^ 1])
    await expect_status(400, keys_env.client.decrypt(enc, Aead(iv, b"hdr"), tampered), "does not decrypt")
    await expect_status(400, keys_env.client.decrypt(enc, Aead(iv, b"other"), ct), "does not decrypt")
    await expect_status(400, keys_env.client.decrypt(enc, RsaPkcs1(), ct), "AEAD only")


async def test_aead_layout_is_aziots_for_imported_keys(keys_env: KeysEnv) -> None:
    key, iv = secrets.token_bytes(32), secrets.token_bytes(12)
    handle = await keys_env.client.import_key(keys_env.new_id(), key, "encrypt")
    ct = await keys_env.client.encrypt(handle, Aead(iv, b"a"), b"payload")
    assert ct == b"\x02" + AESGCM(key).encrypt(iv, b"payload", b"a")
    if keys_env.kind != "pkcs11":  # v1 (IoT Edge 1.1: version, tag, ciphertext) is read by software-held keys
        body = AESGCM(key).encrypt(iv, b"old secret", b"a")
        v1 = b"\x01" + body[-16:] + body[:-16]
        assert await keys_env.client.decrypt(handle, Aead(iv, b"a"), v1) == b"old secret"


async def test_handles_that_are_tampered_foreign_or_expired_get_401(keys_env: KeysEnv) -> None:
    key_id = keys_env.new_id()
    handle = await keys_env.client.create_key_pair_if_not_exists(key_id, "ec-p256")
    digest = hashlib.sha256(b"x").digest()
    sr, sig = handle.split("&")
    doc = base64.b64decode(sr[3:]).replace(key_id.encode(), b"k-other00000")
    forged = "sr=" + base64.b64encode(doc).decode() + "&" + sig
    await expect_status(401, keys_env.client.sign(forged, EcdsaDigest(digest)), "does not verify")
    await expect_status(401, keys_env.client.sign(handle + "x", EcdsaDigest(digest)), "invalid key handle")
    await expect_status(401, keys_env.client.sign("garbage", EcdsaDigest(digest)), "sr=<base64>&sig=<base64>")
    gen = keys_env.service._generations[(KeyKind.KEY_PAIR, key_id)]
    foreign = KeyHandleCodec(secrets.token_bytes(32)).issue(HandleClaims(KeyKind.KEY_PAIR, key_id, gen))
    await expect_status(401, keys_env.client.sign(foreign, EcdsaDigest(digest)), "issued elsewhere")
    expired = keys_env.service.handles.issue(HandleClaims(KeyKind.KEY_PAIR, key_id, gen, int(time.time()) - 1))
    await expect_status(401, keys_env.client.sign(expired, EcdsaDigest(digest)), "expired")
    fresh = await keys_env.client.load_key_pair(key_id, ttl_seconds=300)
    assert await keys_env.client.sign(fresh, EcdsaDigest(digest))


async def test_handle_kinds_are_not_interchangeable(keys_env: KeysEnv) -> None:
    pair = await keys_env.client.create_key_pair_if_not_exists(keys_env.new_id(), "ec-p256")
    sym = await keys_env.client.create_key_if_not_exists(keys_env.new_id(), "derive,sign")
    await expect_status(400, keys_env.client.sign(pair, HmacSha256(b"m")), "needs a handle to a key")
    await expect_status(400, keys_env.client.sign(sym, EcdsaDigest(b"\x01" * 32)), "needs a handle to a keypair")
    await expect_status(400, keys_env.client.delete_key_pair(sym), "keypair")
    await expect_status(400, keys_env.client.export_derived_key(sym), "derived")


async def test_keys_a_token_refuses_fall_back_to_the_software_store(keys_env: KeysEnv) -> None:
    """A token key is AES or HMAC, never both; a TPM has no AES-GCM: such keys live in the encrypted software
    store instead, and work the same through the API."""
    key_id = keys_env.new_id()
    handle = await keys_env.client.create_key_if_not_exists(key_id, "encrypt,sign")
    mac = await keys_env.client.sign(handle, HmacSha256(b"m"))
    assert len(mac) == 32
    iv = secrets.token_bytes(12)
    ct = await keys_env.client.encrypt(handle, Aead(iv, b""), b"both uses")
    assert await keys_env.client.decrypt(handle, Aead(iv, b""), ct) == b"both uses"
    store = keys_env.service.locator.default
    if keys_env.kind == "software":
        assert store.key_info(key_id) is not None
    else:
        assert store.primary.key_info(key_id) is None  # type: ignore[attr-defined]
        assert store.secondary.key_info(key_id) is not None  # type: ignore[attr-defined]


async def test_short_lived_keys_leave_no_lock_behind(keys_env: KeysEnv) -> None:
    """A key created, used and deleted leaves nothing in the service (the per-key lock used to stay for every id
    ever seen: memory that grew with use)."""
    for _ in range(20):
        pair = await keys_env.client.create_key_pair_if_not_exists(keys_env.new_id("brief"), "ec-p256")
        await keys_env.client.sign(pair, EcdsaDigest(b"\x01" * 32))
        await keys_env.client.delete_key_pair(pair)
        secret = await keys_env.client.create_key_if_not_exists(keys_env.new_id("brief"), "sign")
        await keys_env.client.delete_key(secret)
    assert len(keys_env.service._locks) == 0


async def test_many_signatures_with_one_key_all_verify(keys_env: KeysEnv) -> None:
    """Past the first signatures a fast backend signs on the event loop (software: a cached key; PKCS#11: once
    the token has shown itself fast): those signatures verify as the first ones do."""
    handle = await keys_env.client.create_key_pair_if_not_exists(keys_env.new_id("many"), "ec-p256")
    pub = await public_key(keys_env, handle)
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    for i in range(80):
        digest = hashlib.sha256(i.to_bytes(2, "big")).digest()
        der = await keys_env.client.sign(handle, EcdsaDigest(digest))
        pub.verify(der, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
