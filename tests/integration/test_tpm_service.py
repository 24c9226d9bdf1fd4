"""The TPM service (aziot-tpmd's API, 2020-09-01) over a real Unix socket with a real swtpm: EK/SRK publics, the DPS
authentication-key import built by the software "cloud" of edgeward.testing.dps_tpm, HMAC with the imported key,
refusals with a 4xx and a message, and a TPM that goes away."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

pytest.importorskip("tpm2_pytss")

from tpm2_pytss import ESAPI, ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_HC, TPM2B_PUBLIC, TPMA_OBJECT

from edgeward.config.problems import ConfigError
from edgeward.http import HttpError, Listener, start_server
from edgeward.keys.backends.tpm import TpmBackend, TpmSettings
from edgeward.keys.model import HashAlg, KeyPairAlgorithm, SignScheme
from edgeward.testing.dps_tpm import InvalidTpmPublic, TpmChallenge, make_tpm_challenge
from edgeward.tpm.api import TpmApi, TpmKeys, TpmUnavailable
from edgeward.tpm.client import TpmClient
from edgeward.tpm.routes import build_tpm_app
from edgeward.tpm.service import TpmService
from edgeward.tpm.settings import TpmdSettings, parse_tpmd_settings
from tests.fixtures.processes import free_port_pair
from tests.fixtures.swtpm import Swtpm, running_swtpm

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.swtpm,
    pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm is not installed"),
]

V = "2020-09-01"
EK_HANDLE = 0x81010001
SRK_HANDLE = 0x81000001
AUTH_KEY_HANDLE = 0x81000100
EK_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")


# helpers ----------------------------------------------------------------------------------------------------------
@dataclass
class TpmEnv:
    settings: TpmdSettings
    service: TpmService
    client: TpmClient

    @property
    def socket(self) -> Path:
        return self.settings.socket_path


@asynccontextmanager
async def serve_tpm(tcti: str, base: Path, **config: Any) -> AsyncIterator[TpmEnv]:
    """The TPM service on ``tcti``, on a real Unix socket under ``base``, for as long as the context lasts."""
    settings = parse_tpmd_settings({"tcti": tcti, **config}, base / "run")
    service = TpmService(settings)
    try:
        runner = await start_server(build_tpm_app(service, max_requests=settings.max_requests),
                                    [Listener(settings.socket_path)])
        client = TpmClient(settings.socket_path)
        try:
            yield TpmEnv(settings, service, client)
        finally:
            await client.close()
            await runner.cleanup()
    finally:
        service.close()


@pytest_asyncio.fixture
async def tpmd(fresh_swtpm: Swtpm, tmp_path: Path) -> AsyncIterator[TpmEnv]:
    async with serve_tpm(fresh_swtpm.tcti, tmp_path) as env:
        yield env


async def call(env: TpmEnv, method: str, path: str, body: Any = None, version: str | None = V,
               raw: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn = aiohttp.UnixConnector(path=str(env.socket))
    async with aiohttp.ClientSession(connector=conn) as s:
        url = "http://tpmd.sock" + path + (f"?api-version={version}" if version else "")
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = headers if headers is not None else ({"Content-Type": "application/json"} if data else {})
        async with s.request(method, url, data=data, headers=hdrs) as r:
            text = await r.read()
            assert r.content_type == "application/json", text
            return r.status, json.loads(text)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


@pytest.fixture
def esapi(fresh_swtpm: Swtpm) -> Iterator[Any]:
    """A second, independent connection to the same TPM, to look at what the service left there."""
    ectx = ESAPI(fresh_swtpm.tcti)
    try:
        yield ectx
    finally:
        ectx.close()


def loaded_handles(ectx: Any) -> list[int]:
    _, objects = ectx.get_capability(TPM2_CAP.HANDLES, TPM2_HC.TRANSIENT_FIRST, 64)
    _, sessions = ectx.get_capability(TPM2_CAP.HANDLES, TPM2_HC.LOADED_SESSION_FIRST, 64)
    return [int(h) for h in objects.data.handles if int(h) >> 24 == 0x80] + \
        [int(h) for h in sessions.data.handles if int(h) >> 24 in (0x02, 0x03)]


def persistent_public(ectx: Any, handle: int) -> bytes:
    tr = ectx.tr_from_tpmpublic(handle)
    try:
        return bytes(ectx.read_public(tr)[0].marshal())
    finally:
        ectx.tr_close(tr)


def tpm2b_spans(blob: bytes) -> list[tuple[int, int]]:
    """Where each size-prefixed part of an authentication-key blob lies (the blob's layout, read independently)."""
    spans, offset = [], 0
    while offset + 2 <= len(blob):
        size = int.from_bytes(blob[offset:offset + 2], "big")
        spans.append((offset + 2, offset + 2 + size))
        offset += 2 + size
    assert offset == len(blob)
    return spans


def unmarshal_whole(raw: bytes) -> Any:
    public, used = TPM2B_PUBLIC.unmarshal(raw)
    assert used == len(raw)
    return public.publicArea


async def import_new_key(api: TpmApi, hmac_key: bytes | None = None) -> TpmChallenge:
    keys = await api.get_tpm_keys()
    challenge = make_tpm_challenge(keys.endorsement_key, keys.storage_root_key, hmac_key)
    await api.import_auth_key(challenge.authentication_key)
    return challenge


# EK and SRK --------------------------------------------------------------------------------------------------------
async def test_get_tpm_keys_returns_the_persistent_ek_and_srk_stable_across_calls_and_restarts(
    fresh_swtpm: Swtpm, tmp_path: Path, esapi: Any
) -> None:
    async with serve_tpm(fresh_swtpm.tcti, tmp_path / "first") as env:
        status, body = await call(env, "GET", "/get_tpm_keys")
        assert status == 200 and set(body) == {"endorsement_key", "storage_root_key"}
        keys = TpmKeys(base64.b64decode(body["endorsement_key"], validate=True),
                       base64.b64decode(body["storage_root_key"], validate=True))
        assert await env.client.get_tpm_keys() == keys
        assert await env.service.get_tpm_keys() == keys

    ek, srk = unmarshal_whole(keys.endorsement_key), unmarshal_whole(keys.storage_root_key)
    # EK: TCG EK Credential Profile template L-1 (RSA 2048, only usable through PolicySecret(endorsement))
    assert ek.type == TPM2_ALG.RSA and ek.parameters.rsaDetail.keyBits == 2048 and ek.nameAlg == TPM2_ALG.SHA256
    assert bytes(ek.authPolicy) == EK_POLICY
    ek_attrs = int(ek.objectAttributes)
    for attr in (TPMA_OBJECT.FIXEDTPM, TPMA_OBJECT.FIXEDPARENT, TPMA_OBJECT.SENSITIVEDATAORIGIN,
                 TPMA_OBJECT.ADMINWITHPOLICY, TPMA_OBJECT.RESTRICTED, TPMA_OBJECT.DECRYPT):
        assert ek_attrs & attr
    assert not ek_attrs & TPMA_OBJECT.USERWITHAUTH
    # SRK: the Provisioning Guidance's RSA 2048 storage key
    assert srk.type == TPM2_ALG.RSA and srk.parameters.rsaDetail.keyBits == 2048
    srk_attrs = int(srk.objectAttributes)
    for attr in (TPMA_OBJECT.RESTRICTED, TPMA_OBJECT.DECRYPT, TPMA_OBJECT.USERWITHAUTH, TPMA_OBJECT.NODA):
        assert srk_attrs & attr
    assert len(bytes(ek.unique.rsa)) == len(bytes(srk.unique.rsa)) == 256
    assert bytes(ek.unique.rsa) != bytes(srk.unique.rsa)
    # persisted at the standard handles, so other TPM software (and a restarted service) finds them
    assert persistent_public(esapi, EK_HANDLE) == keys.endorsement_key
    assert persistent_public(esapi, SRK_HANDLE) == keys.storage_root_key
    assert loaded_handles(esapi) == []

    async with serve_tpm(fresh_swtpm.tcti, tmp_path / "second") as env:
        assert await env.client.get_tpm_keys() == keys
    fresh_swtpm.restart()
    async with serve_tpm(fresh_swtpm.tcti, tmp_path / "third") as env:
        assert await env.client.get_tpm_keys() == keys


# import and sign ---------------------------------------------------------------------------------------------------
async def test_imported_auth_key_signs_like_python_hmac_with_the_key_the_cloud_chose(
    tpmd: TpmEnv, fresh_swtpm: Swtpm, tmp_path: Path, esapi: Any
) -> None:
    keys = await tpmd.client.get_tpm_keys()
    challenge = make_tpm_challenge(keys.endorsement_key, keys.storage_root_key)
    assert challenge.hmac_key.hex() not in repr(challenge)
    # five TPM2Bs (credential blob, secret, duplicate, seed, public area), then the empty encrypted-data field
    spans = tpm2b_spans(challenge.authentication_key)
    assert len(spans) == 6 and spans[5][0] == spans[5][1] == len(challenge.authentication_key)
    public_area = unmarshal_whole(challenge.authentication_key[spans[4][0] - 2:spans[4][1]])
    assert public_area.type == TPM2_ALG.KEYEDHASH
    assert not int(public_area.objectAttributes) & (TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT)
    status, body = await call(tpmd, "POST", "/import_auth_key", {"key": challenge.authentication_key_b64})
    assert (status, body) == (200, {})

    sas_like = b"myscope%2fregistrations%2fmy-device\n1735689600"
    for data in (b"", sas_like, os.urandom(1024), os.urandom(1025), os.urandom(5000)):
        assert await tpmd.client.sign_with_auth_key(data) == hmac_sha256(challenge.hmac_key, data)
    status, body = await call(tpmd, "POST", "/sign_with_auth_key", {"data": b64(sas_like)})
    assert (status, body) == (200, {"digest": b64(hmac_sha256(challenge.hmac_key, sas_like))})

    # persisted as an HMAC key at 0x81000000 + auth_key_index; nothing left loaded in the TPM's few slots
    auth_key = unmarshal_whole(persistent_public(esapi, AUTH_KEY_HANDLE))
    assert auth_key.type == TPM2_ALG.KEYEDHASH
    assert loaded_handles(esapi) == []

    # concurrent callers are served one TPM command at a time, each correctly
    datas = [os.urandom(64) for _ in range(20)]
    digests = await asyncio.gather(*(tpmd.client.sign_with_auth_key(d) for d in datas))
    assert digests == [hmac_sha256(challenge.hmac_key, d) for d in datas]

    # a new registration replaces the key (here a blob without the trailing field, which is ignored anyway);
    # the new one survives a restart of the service and of the TPM
    second = make_tpm_challenge(keys.endorsement_key, keys.storage_root_key)
    await tpmd.client.import_auth_key(second.authentication_key[:-2])
    assert await tpmd.client.sign_with_auth_key(sas_like) == hmac_sha256(second.hmac_key, sas_like)
    assert loaded_handles(esapi) == []
    fresh_swtpm.restart()
    async with serve_tpm(fresh_swtpm.tcti, tmp_path / "again") as env:
        assert await env.client.sign_with_auth_key(sas_like) == hmac_sha256(second.hmac_key, sas_like)


async def test_auth_key_index_setting_chooses_the_persistent_handle(
    fresh_swtpm: Swtpm, tmp_path: Path, esapi: Any
) -> None:
    async with serve_tpm(fresh_swtpm.tcti, tmp_path, auth_key_index=0x10_10_10) as env:
        assert env.settings.auth_key_handle == 0x81101010
        challenge = await import_new_key(env.client)
        assert await env.client.sign_with_auth_key(b"x") == hmac_sha256(challenge.hmac_key, b"x")
    assert unmarshal_whole(persistent_public(esapi, 0x81101010)).type == TPM2_ALG.KEYEDHASH
    _, data = esapi.get_capability(TPM2_CAP.HANDLES, TPM2_HC.PERSISTENT_FIRST, 64)
    assert AUTH_KEY_HANDLE not in [int(h) for h in data.data.handles]


async def test_blob_made_for_another_tpm_is_refused_with_400_and_the_imported_key_stays(
    tpmd: TpmEnv, tmp_path: Path, esapi: Any
) -> None:
    first = await import_new_key(tpmd.client)
    ours = await tpmd.client.get_tpm_keys()
    with running_swtpm(tmp_path / "other-tpm") as other_tpm:
        other_service = TpmService(parse_tpmd_settings({"tcti": other_tpm.tcti}, tmp_path / "other-run"))
        try:
            theirs = await other_service.get_tpm_keys()
        finally:
            other_service.close()
    assert theirs != ours

    cases = [
        ("their EK and SRK", theirs.endorsement_key, theirs.storage_root_key, "not made for this TPM"),
        ("their EK, our SRK", theirs.endorsement_key, ours.storage_root_key, "not made for this TPM"),
        ("our EK, their SRK", ours.endorsement_key, theirs.storage_root_key, "not made for this TPM"),
    ]
    for label, ek, srk, expected in cases:
        blob = make_tpm_challenge(ek, srk).authentication_key
        status, body = await call(tpmd, "POST", "/import_auth_key", {"key": b64(blob)})
        assert status == 400, (label, body)
        assert expected in body["message"] and "endorsement key" in body["message"], (label, body)
        with pytest.raises(HttpError) as caught:
            await tpmd.client.import_auth_key(blob)
        assert caught.value.status == 400

    # made for this TPM, but the duplicated HMAC key was altered on the way: TPM2_Import's integrity check
    tampered = bytearray(make_tpm_challenge(ours.endorsement_key, ours.storage_root_key).authentication_key)
    start, end = tpm2b_spans(bytes(tampered))[2]
    tampered[(start + end) // 2] ^= 0x01
    status, body = await call(tpmd, "POST", "/import_auth_key", {"key": b64(bytes(tampered))})
    assert status == 400 and "cannot be imported under this TPM's storage root key" in body["message"], body

    # nothing changed: the key imported before still signs, and the TPM's slots are free
    assert await tpmd.client.sign_with_auth_key(b"still") == hmac_sha256(first.hmac_key, b"still")
    assert loaded_handles(esapi) == []


async def test_sign_before_any_import_is_a_404_that_says_what_to_do(tpmd: TpmEnv) -> None:
    with pytest.raises(HttpError) as caught:
        await tpmd.client.sign_with_auth_key(b"data")
    assert caught.value.status == 404
    assert "no authentication key has been imported" in caught.value.message
    assert "0x81000100" in caught.value.message and "import_auth_key" in caught.value.message
    status, body = await call(tpmd, "POST", "/sign_with_auth_key", {"data": b64(b"data")})
    assert status == 404 and body == {"message": caught.value.message}


async def test_a_foreign_object_at_the_auth_key_handle_is_named_and_replaced_by_an_import(
    tpmd: TpmEnv, esapi: Any
) -> None:
    foreign, *_ = esapi.create_primary(None, "ecc256", ESYS_TR.OWNER)
    esapi.evict_control(ESYS_TR.OWNER, foreign, AUTH_KEY_HANDLE)
    esapi.flush_context(foreign)
    with pytest.raises(HttpError) as caught:
        await tpmd.client.sign_with_auth_key(b"data")
    assert caught.value.status == 503
    assert "not an HMAC key" in caught.value.message and "auth_key_index" in caught.value.message
    challenge = await import_new_key(tpmd.client)
    assert await tpmd.client.sign_with_auth_key(b"data") == hmac_sha256(challenge.hmac_key, b"data")


# bad input ---------------------------------------------------------------------------------------------------------
async def test_bad_requests_get_a_4xx_with_a_message_and_the_service_keeps_serving(tpmd: TpmEnv) -> None:
    keys = await tpmd.client.get_tpm_keys()
    blob = make_tpm_challenge(keys.endorsement_key, keys.storage_root_key).authentication_key
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("GET", "/get_tpm_keys", {"version": None}, 400, "api-version"),
        ("GET", "/get_tpm_keys", {"version": "2021-05-01"}, 400, "api-version"),
        ("POST", "/import_auth_key", {}, 400, "missing request body"),
        ("POST", "/sign_with_auth_key", {}, 400, "missing request body"),
        ("POST", "/import_auth_key", {"raw": b"{not json"}, 400, "not valid JSON"),
        ("POST", "/import_auth_key", {"raw": b"[1, 2]"}, 422, "JSON object"),
        ("POST", "/import_auth_key", {"body": {}}, 422, "key"),
        ("POST", "/import_auth_key", {"body": {"key": 5}}, 422, "key"),
        ("POST", "/import_auth_key", {"body": {"key": "!!not base64!!"}}, 422, "base64"),
        ("POST", "/import_auth_key", {"body": {"key": ""}}, 400, "blob is empty"),
        ("POST", "/import_auth_key", {"body": {"key": b64(b"garbage")}}, 400, "malformed"),
        ("POST", "/import_auth_key", {"body": {"key": b64(blob[:300])}}, 400, "malformed"),
        ("POST", "/import_auth_key", {"body": {"key": b64(blob[:-150])}}, 400, "malformed"),
        ("POST", "/import_auth_key", {"body": {"key": b64(keys.endorsement_key * 5)}}, 400, "authentication key"),
        ("POST", "/sign_with_auth_key", {"body": {"data": ["a"]}}, 422, "data"),
        ("POST", "/sign_with_auth_key", {"body": {"digest": "AAAA"}}, 422, "data"),
        ("POST", "/sign_with_auth_key", {"raw": b"data=1", "headers": {"Content-Type": "text/plain"}}, 415,
         "application/json"),
        ("GET", "/no_such_route", {}, 404, "no such route"),
        ("POST", "/get_tpm_keys", {}, 405, "not allowed"),
    ]
    for method, path, kw, status, words in cases:
        got, body = await call(tpmd, method, path, kw.get("body"), version=kw.get("version", V), raw=kw.get("raw"),
                               headers=kw.get("headers"))
        assert got == status, (method, path, kw, body)
        assert set(body) == {"message"} and words in body["message"], (method, path, kw, body)
    assert await tpmd.client.get_tpm_keys() == keys


async def test_cloud_side_refuses_publics_that_are_no_storage_keys() -> None:
    with pytest.raises(InvalidTpmPublic, match="TPM2B_PUBLIC"):
        make_tpm_challenge(b"\x00\x05abc", b"")
    # a signing key: nothing can be wrapped to it
    template = TPM2B_PUBLIC.parse("rsa2048:rsassa-sha256",
                                  objectAttributes=TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH)
    with pytest.raises(InvalidTpmPublic, match="restricted decryption"):
        make_tpm_challenge(bytes(template.marshal()), bytes(template.marshal()))


# the TPM and its configuration -------------------------------------------------------------------------------------
async def test_unreachable_tpm_is_a_clear_error_naming_the_tcti_setting(fresh_swtpm: Swtpm, tmp_path: Path) -> None:
    nowhere = f"swtpm:host=127.0.0.1,port={free_port_pair()}"
    with pytest.raises(TpmUnavailable, match=r"tpm\.tcti") as caught:
        TpmService(parse_tpmd_settings({"tcti": nowhere}, tmp_path, prefix="tpm"))
    assert nowhere in caught.value.message and caught.value.status == 503
    with pytest.raises(TpmUnavailable, match=r"setting tcti\)"):
        TpmService(parse_tpmd_settings({"tcti": "nonsense:xyz"}, tmp_path))

    async with serve_tpm(fresh_swtpm.tcti, tmp_path) as env:
        challenge = await import_new_key(env.client)
        keys = await env.client.get_tpm_keys()
        fresh_swtpm.stop()
        for attempt in (env.client.get_tpm_keys(), env.client.sign_with_auth_key(b"x")):
            with pytest.raises(HttpError) as lost:
                await attempt
            assert lost.value.status == 503
            assert "tcti" in lost.value.message and fresh_swtpm.tcti in lost.value.message
        fresh_swtpm.start(fresh_swtpm.port)  # the TPM comes back: the service reconnects on the next request
        assert await env.client.get_tpm_keys() == keys
        assert await env.client.sign_with_auth_key(b"x") == hmac_sha256(challenge.hmac_key, b"x")


async def test_hierarchy_authorization_is_used_and_a_wrong_one_is_named(
    fresh_swtpm: Swtpm, tmp_path: Path, esapi: Any
) -> None:
    esapi.hierarchy_change_auth(ESYS_TR.OWNER, b"owner-secret")
    esapi.hierarchy_change_auth(ESYS_TR.ENDORSEMENT, b"endorsement-secret")
    right = {"endorsement": "endorsement-secret", "owner": "owner-secret"}
    for wrong, setting in (({**right, "endorsement": "nope"}, "hierarchy_authorization.endorsement"),
                           ({**right, "owner": "nope"}, "hierarchy_authorization.owner")):
        settings = parse_tpmd_settings({"tcti": fresh_swtpm.tcti, "hierarchy_authorization": wrong}, tmp_path)
        with pytest.raises(TpmUnavailable, match=setting.replace(".", r"\.")) as caught:
            TpmService(settings)
        assert "secret" not in caught.value.message
        assert "secret" not in repr(settings)

    async with serve_tpm(fresh_swtpm.tcti, tmp_path, hierarchy_authorization=right) as env:
        challenge = await import_new_key(env.client)  # PolicySecret(endorsement) with its authValue
        assert await env.client.sign_with_auth_key(b"x") == hmac_sha256(challenge.hmac_key, b"x")
        challenge = await import_new_key(env.client)  # replacing it needs the owner's authValue
        assert await env.client.sign_with_auth_key(b"y") == hmac_sha256(challenge.hmac_key, b"y")


async def test_works_under_the_ecc_srk_of_the_keys_tpm_backend_which_keeps_working(
    fresh_swtpm: Swtpm, tmp_path: Path
) -> None:
    backend = TpmBackend(TpmSettings(tcti=fresh_swtpm.tcti, blob_dir=tmp_path / "blobs"))  # creates an ECC SRK
    try:
        pair = backend.create_key_pair("device-id", KeyPairAlgorithm.EC_P256)
        digest = hashlib.sha256(b"m").digest()
        backend.sign_digest("device-id", digest, SignScheme("ecdsa", HashAlg.SHA256))
        async with serve_tpm(fresh_swtpm.tcti, tmp_path) as env:
            keys = await env.client.get_tpm_keys()
            assert unmarshal_whole(keys.storage_root_key).type == TPM2_ALG.ECC
            challenge = await import_new_key(env.client)
            assert await env.client.sign_with_auth_key(b"x") == hmac_sha256(challenge.hmac_key, b"x")
            backend.sign_digest("device-id", digest, SignScheme("ecdsa", HashAlg.SHA256))
            assert await env.client.sign_with_auth_key(b"y") == hmac_sha256(challenge.hmac_key, b"y")
        assert backend.key_pair_info("device-id") == pair
    finally:
        backend.close()


async def test_tpm_slots_filled_by_another_process_do_not_block_the_import(
    tpmd: TpmEnv, fresh_swtpm: Swtpm, esapi: Any
) -> None:
    leaked = ESAPI(fresh_swtpm.tcti)
    for _ in range(3):
        leaked.create_primary(None, "ecc256", ESYS_TR.NULL)
    leaked.close()  # as after kill -9: the objects stay loaded in a TPM without a resource manager
    assert len(loaded_handles(esapi)) == 3
    challenge = await import_new_key(tpmd.client)
    assert await tpmd.client.sign_with_auth_key(b"x") == hmac_sha256(challenge.hmac_key, b"x")
    assert loaded_handles(esapi) == []


# settings and composition ------------------------------------------------------------------------------------------
async def test_settings_read_aziot_tpmd_config_and_name_every_problem(tmp_path: Path) -> None:
    defaults = parse_tpmd_settings({}, tmp_path)
    assert (defaults.tcti, defaults.auth_key_index, defaults.auth_key_handle) == ("device", 0x100, AUTH_KEY_HANDLE)
    assert defaults.socket_path == tmp_path / "tpmd.sock" and defaults.max_requests == 10

    doc = {"tcti": "swtpm:port=2321", "auth_key_index": 0x01_02_03, "max_requests": 50,
           "hierarchy_authorization": {"endorsement": "hello", "owner": "world"},
           "endpoints": {"aziot_tpmd": "unix:///custom/path/tpmd.sock"}}
    settings = parse_tpmd_settings(doc, tmp_path)
    assert settings.auth_key_handle == 0x81010203 and settings.socket_path == Path("/custom/path/tpmd.sock")
    assert settings.hierarchy_authorization.endorsement == "hello" and settings.max_requests == 50
    assert "hello" not in repr(settings) and "world" not in repr(settings)
    # aziotctl's template quotes the index
    assert parse_tpmd_settings({"auth_key_index": "0x00_01_00"}, tmp_path).auth_key_index == 0x100

    bad = {"tcti": 5, "auth_key_index": 0x80_00_00, "max_requests": 0,
           "hierarchy_authorization": {"owner": 1234, "endorsement": "x" * 65},
           "endpoints": {"aziot_tpmd": "http://localhost"}}
    with pytest.raises(ConfigError) as caught:
        parse_tpmd_settings(bad, tmp_path, prefix="tpm")
    text = str(caught.value)
    for name in ("tpm.tcti", "tpm.auth_key_index", "tpm.max_requests", "tpm.hierarchy_authorization.owner",
                 "tpm.hierarchy_authorization.endorsement", "tpm.endpoints.aziot_tpmd"):
        assert name in text
    assert "1234" not in text and "x" * 65 not in text
    for reserved in (0x01, 0x01_00_01):
        with pytest.raises(ConfigError, match="holds the"):
            parse_tpmd_settings({"auth_key_index": reserved}, tmp_path)


async def test_service_and_client_are_both_tpm_apis(tpmd: TpmEnv) -> None:
    apis: list[TpmApi] = [tpmd.service, tpmd.client]  # checked by mypy
    results = [await api.get_tpm_keys() for api in apis]
    assert results[0] == results[1]
