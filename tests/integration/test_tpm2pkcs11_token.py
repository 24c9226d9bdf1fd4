"""tpm2-pkcs11 behind tpm2-abrmd, as IoT Edge documents keeping keys in a TPM: what that token does differently from
SoftHSM2, driven through the keys service's real socket (the conformance suite covers the common behaviour)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11._pkcs11 import DecryptMixin

from edgeward.http.errors import HttpError
from edgeward.keys.backends.pkcs11 import Pkcs11Backend
from edgeward.keys.model import EcdsaDigest
from tests.fixtures.certs import serve_certs
from tests.fixtures.keys import KeysEnv, serve_keys
from tests.fixtures.tpm2pkcs11 import Tpm2Pkcs11Token

pytestmark = pytest.mark.asyncio(loop_scope="session")


def token_backend(env: KeysEnv) -> Pkcs11Backend:
    backend = env.service.locator.default.primary  # type: ignore[attr-defined]
    assert isinstance(backend, Pkcs11Backend)
    return backend


async def ec_public_key(env: KeysEnv, handle: str) -> ec.EllipticCurvePublicKey:
    import base64

    point = base64.b64decode(await env.client.get_key_pair_public_parameter(handle, "ec-point"))
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)


async def signs(env: KeysEnv, handle: str) -> None:
    digest = hashlib.sha256(handle.encode()).digest()
    der = await env.client.sign(handle, EcdsaDigest(digest))
    (await ec_public_key(env, handle)).verify(der, handle.encode(), ec.ECDSA(hashes.SHA256()))


@contextmanager
def abrmd_stopped(token: Tpm2Pkcs11Token) -> Iterator[None]:
    """The resource manager goes away (crash, restart by its service manager) and comes back."""
    token.abrmd.stop()
    try:
        yield
    finally:
        token.abrmd.start()


@pytest.mark.parametrize("kind", ["pkcs11", "tpm2pkcs11"])
async def test_key_pairs_sign_and_are_never_extractable_on_either_token(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with serve_keys(kind, request, tmp_path) as env:
        for alg in ("ec-p256", "rsa-2048"):
            key_id = env.new_id()
            await env.client.create_key_pair_if_not_exists(key_id, alg)

            def attributes(session: Any, key_id: str = key_id) -> tuple[dict[str, bool], dict[str, bool]]:
                private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=key_id)
                public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=key_id)
                return ({a.name: bool(private[a]) for a in (
                    Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.ALWAYS_SENSITIVE,
                    Attribute.NEVER_EXTRACTABLE, Attribute.SIGN, Attribute.UNWRAP, Attribute.DERIVE,
                    Attribute.DECRYPT, Attribute.PRIVATE, Attribute.TOKEN)},
                        {a.name: bool(public[a]) for a in (Attribute.WRAP, Attribute.VERIFY, Attribute.ENCRYPT)})

            backend = token_backend(env)
            private, public = backend._with(attributes)
            # what Edgeward states and checks, on every token
            assert {k: v for k, v in private.items() if k != "DECRYPT"} == {
                "SENSITIVE": True, "EXTRACTABLE": False, "ALWAYS_SENSITIVE": True, "NEVER_EXTRACTABLE": True,
                "SIGN": True, "UNWRAP": False, "DERIVE": False, "PRIVATE": True, "TOKEN": True,
            }, private
            assert public["WRAP"] is False and public["VERIFY"] is True, public
            if kind == "tpm2pkcs11":
                # tpm2-pkcs11 makes every TPM key sign+decrypt and refuses a template saying otherwise; the
                # attributes say so truthfully (Edgeward never asks a key pair to decrypt)
                assert private["DECRYPT"] is True and public["ENCRYPT"] is True
                continue
            assert private["DECRYPT"] is False and public["ENCRYPT"] is False
            if alg.startswith("rsa"):  # and the token holds to it: the private key decrypts nothing
                def decrypt(session: Any, key_id: str = key_id) -> bytes:
                    key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=key_id)
                    # python-pkcs11 offers decrypt() only on keys with CKA_DECRYPT; ask the token regardless
                    key.__class__ = type("PrivateKey", (type(key), DecryptMixin), {})
                    return bytes(key.decrypt(b"\x00" + b"\x01" * 255, mechanism=Mechanism.RSA_X_509))

                with pytest.raises(HttpError) as info:
                    backend._with(decrypt)
                assert "0x68" in info.value.message, info.value.message  # CKR_KEY_FUNCTION_NOT_PERMITTED


async def test_more_key_pairs_than_tpm2_abrmd_holds_contexts_for_all_work(
    request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """tpm2-pkcs11 keeps every key it used loaded; past tpm2-abrmd's per-connection limit (27 transient objects:
    the 13th or 14th new pair) it fails. The backend re-initializes the library, which frees them, and goes on."""
    caplog.set_level(logging.WARNING, "edgeward.keys.backends.pkcs11")
    extra = {"edgeward": {"keys": {"max_concurrency": 4}}}
    async with serve_keys("tpm2pkcs11", request, tmp_path, extra) as env:
        started = time.monotonic()
        handles = [await env.client.create_key_pair_if_not_exists(env.new_id(), "ec-p256") for _ in range(30)]
        created = time.monotonic() - started
        assert [r for r in caplog.records if "re-initializing the library" in r.getMessage()], \
            "30 key pairs should have exhausted the TPM object contexts at least once"
        caplog.clear()
        # Every key again, 4 at a time: loading them exhausts the contexts again while other requests wait with
        # sessions of the generation being re-initialized; each signature must still come from its own key.
        await asyncio.gather(*(signs(env, handle) for handle in handles + handles))
        elapsed = time.monotonic() - started
    recoveries = [r for r in caplog.records if "re-initializing the library" in r.getMessage()]
    assert recoveries, "signing with 30 keys should have exhausted the TPM object contexts again"
    print(f"tpm2-pkcs11: 30 key pairs in {created:.1f}s, then 60 concurrent signatures; {elapsed:.1f}s in all, "
          f"{len(recoveries)} re-initializations while signing")


async def test_a_token_that_fails_answers_503_naming_it_and_the_service_recovers(
    request: pytest.FixtureRequest, tmp_path: Path, tpm2pkcs11: Tpm2Pkcs11Token
) -> None:
    async with serve_keys("tpm2pkcs11", request, tmp_path) as env:
        handle = await env.client.create_key_pair_if_not_exists(env.new_id(), "ec-p256")
        with abrmd_stopped(tpm2pkcs11):
            for call in (env.client.sign(handle, EcdsaDigest(b"\x01" * 32)),
                         env.client.create_key_pair_if_not_exists(env.new_id(), "ec-p256")):
                with pytest.raises(HttpError) as info:
                    await call
                assert info.value.status == 503, info.value.message
                assert "token label 'edgeward-tpm'" in info.value.message
                assert "aziot_keys.pkcs11_base_slot" in info.value.message
        # abrmd is back: the same service, the same handle, without a restart
        await signs(env, handle)
        await signs(env, await env.client.create_key_pair_if_not_exists(env.new_id(), "ec-p256"))


async def test_renewal_on_a_failing_token_logs_the_reason_and_backs_off(
    request: pytest.FixtureRequest, tmp_path: Path, tpm2pkcs11: Tpm2Pkcs11Token, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "edgeward.certs.renewal")
    doc = {"cert_issuance": {
        "local_ca": {"cert": "ca", "pk": "ca"},
        "edge-server": {"method": "local_ca", "expiry_seconds": 4, "common_name": "edge.example",
                        "auto_renew": {"rotate_key": True, "threshold": "10%", "retry": "10%"}},
    }}
    async with serve_certs("tpm2pkcs11", request, tmp_path, doc) as env:
        events = env.engine.subscribe()
        await env.engine.start()
        await asyncio.wait_for(events.get(), 30)
        with abrmd_stopped(tpm2pkcs11):
            deadline = time.monotonic() + 30
            while len(failed := [r for r in caplog.records
                                 if r.getMessage().startswith("renewal of 'edge-server' failed")]) < 2:
                assert time.monotonic() < deadline, env.engine.status()
                await asyncio.sleep(0.05)
            status = env.engine.status()[0]
            assert status.last_error and "token label 'edgeward-tpm'" in status.last_error, status
            assert all("BackendUnavailable: the PKCS#11 token with token label 'edgeward-tpm'" in r.getMessage()
                       for r in failed)
            waits = [float(r.args[2]) for r in failed]  # type: ignore[index]
            assert waits[1] > waits[0], waits  # backed off
        env.engine.wake("edge-server")  # the token is back: the next attempt (woken, not waited for) succeeds
        renewed = await asyncio.wait_for(events.get(), 30)
        leaf = x509.load_pem_x509_certificates((await env.service.get_cert("edge-server")).encode())[0]
        assert leaf.not_valid_after_utc == renewed.not_after
