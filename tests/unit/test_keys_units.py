"""Fast tests of the keys service's parsers and pure parts (no services)."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeward.http.errors import TooManyRequests
from edgeward.http.limits import UidLimiter
from edgeward.keys import aead
from edgeward.keys.errors import InvalidHandle
from edgeward.keys.handles import HandleClaims, KeyHandleCodec
from edgeward.keys.model import KeyKind, KeyPairAlgorithm, KeyUsage, parse_preferred_algorithms, parse_usage
from edgeward.keys.principals import KeyPrincipal, PrincipalTable
from edgeward.keys.uri import FileUri, KeyUriError, Pkcs11Uri, parse_key_uri, redact_uri


def test_handle_round_trip_and_expiry() -> None:
    codec = KeyHandleCodec(secrets.token_bytes(32))
    claims = HandleClaims(KeyKind.DERIVED, "module/1", "abcd", 1000, b"\x00data")
    handle = codec.issue(claims)
    assert codec.verify(handle, now=999) == claims
    with pytest.raises(InvalidHandle, match="expired"):
        codec.verify(handle, now=1000)


def test_two_handles_for_one_key_differ_and_both_verify() -> None:
    codec = KeyHandleCodec(secrets.token_bytes(32))
    claims = HandleClaims(KeyKind.KEY, "k", "g")
    a, b = codec.issue(claims), codec.issue(claims)
    assert a != b
    assert codec.verify(a) == codec.verify(b) == claims


@given(st.text(max_size=300))
def test_handle_parser_never_crashes_on_arbitrary_input(text: str) -> None:
    codec = KeyHandleCodec(b"k" * 32)
    with pytest.raises(InvalidHandle):
        codec.verify(text)


def test_reprs_never_show_secrets() -> None:
    key = secrets.token_bytes(32)
    assert key.hex() not in repr(KeyHandleCodec(key))
    uri = parse_key_uri("pkcs11:token=edge;object=dev?pin-value=98765")
    assert "98765" not in repr(uri)
    assert redact_uri("pkcs11:token=a?pin-value=98765&module-path=/x") == "pkcs11:token=a?pin-value=<redacted>&module-path=/x"


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("device-*", ["device-", "device-1", "device-a/b"], ["devic", "xdevice-1"]),
        ("k?", ["k1", "kk"], ["k", "k12"]),
        ("a.b", ["a.b"], ["axb"]),
        ("[x]", ["[x]"], ["x"]),
    ],
)
def test_principal_globs_support_only_star_and_question_mark(pattern: str, matches: list[str], misses: list[str]) -> None:
    p = KeyPrincipal(1000, (pattern,))
    assert all(p.allows(m) for m in matches)
    assert not any(p.allows(m) for m in misses)


def test_principal_table_trusts_root_and_refuses_unknown_uids() -> None:
    table = PrincipalTable([KeyPrincipal(5, ("a*",))], trusted_uids={0})
    assert table.allows(0, "anything")
    assert table.allows(5, "abc")
    assert not table.allows(5, "b")
    assert not table.allows(6, "abc")


def test_pkcs11_uri_parsing() -> None:
    uri = parse_key_uri("pkcs11:token=My%20Token;object=dev%2Fkey?pin-value=12%2634&module-path=/lib/x.so")
    assert uri == Pkcs11Uri(token="My Token", object="dev/key", pin_value="12&34", module_path="/lib/x.so")
    assert parse_key_uri("pkcs11:slot-id=7") == Pkcs11Uri(slot_id=7)
    assert parse_key_uri("file:///etc/k.pem") == FileUri(__import__("pathlib").Path("/etc/k.pem"))
    for bad, msg in [("pkcs11:object=x", "must name a token"), ("pkcs11:slot-id=x", "slot-id must be a number"),
                     ("pkcs11:token=a;token=b", "given twice"), ("pkcs11:token", "expected name=value"),
                     ("pkcs11:token=a;bogus=1", "unknown pkcs11 URI path attribute"),
                     ("file://host/k", "names a host"), ("file:relative", "unsupported"), ("http://x", "unsupported")]:
        with pytest.raises(KeyUriError, match=msg):
            parse_key_uri(bad)


@given(st.text(max_size=200))
def test_key_uri_parser_raises_only_its_own_error(text: str) -> None:
    try:
        parse_key_uri(text)
    except KeyUriError:
        pass


def test_preferred_algorithms_and_usage() -> None:
    assert parse_preferred_algorithms("rsa-2048:ec-p256")[:2] == [KeyPairAlgorithm.RSA_2048, KeyPairAlgorithm.EC_P256]
    assert parse_preferred_algorithms(None)[0] == KeyPairAlgorithm.EC_P256
    assert parse_preferred_algorithms("bogus") == []
    assert parse_usage("derive, sign") == KeyUsage.DERIVE | KeyUsage.SIGN
    with pytest.raises(ValueError, match="unknown key usage"):
        parse_usage("sign,fly")


def test_aead_v1_and_v2_layouts() -> None:
    key, iv = secrets.token_bytes(32), secrets.token_bytes(12)
    v2 = aead.seal(key, iv, b"aad", b"hello")
    assert v2[0] == 2 and len(v2) == 1 + 5 + 16
    assert aead.open_(key, iv, b"aad", v2) == b"hello"
    v1 = b"\x01" + v2[-16:] + v2[1:-16]
    assert aead.open_(key, iv, b"aad", v1) == b"hello"
    with pytest.raises(aead.AeadError, match="unknown version 3"):
        aead.open_(key, iv, b"aad", b"\x03" + v2[1:])
    with pytest.raises(aead.AeadError, match="too short"):
        aead.open_(key, iv, b"aad", b"\x02abc")
    with pytest.raises(aead.AeadError, match="256-bit key"):
        aead.seal(b"short", iv, b"", b"x")


async def test_uid_limiter_queues_then_refuses() -> None:
    limiter = UidLimiter(max_in_flight=1, max_waiting=1)
    release = asyncio.Event()

    async def hold() -> None:
        async with limiter.hold(7):
            await release.wait()

    first = asyncio.create_task(hold())
    await asyncio.sleep(0)
    second = asyncio.create_task(hold())
    await asyncio.sleep(0)
    with pytest.raises(TooManyRequests, match="uid 7"):
        async with limiter.hold(7):
            pass
    async with limiter.hold(8):  # other uids are not affected
        pass
    release.set()
    await asyncio.gather(first, second)
    assert limiter.in_flight(7) == 0


def test_settings_and_backends_reprs_hide_pins_and_keys(tmp_path: Path) -> None:
    from edgeward.keys.backends.pkcs11 import Pkcs11Settings
    from edgeward.keys.backends.software import SoftwareBackend
    from edgeward.keys.backends.tpm import TpmSettings
    from edgeward.keys.settings import parse_keys_settings

    master = secrets.token_bytes(32)
    assert master.hex() not in repr(SoftwareBackend(tmp_path / "sw", master))
    assert "s3cr3t" not in repr(Pkcs11Settings("/lib.so", "s3cr3t", "tok"))
    assert "s3cr3t" not in repr(TpmSettings(tcti="device:/dev/tpmrm0", blob_dir=Path("/x"), owner_auth="s3cr3t"))
    settings = parse_keys_settings(
        {"aziot_keys": {"pkcs11_lib_path": "/lib.so", "pkcs11_base_slot": "pkcs11:token=t?pin-value=s3cr3t"},
         "edgeward": {"keys": {"tpm_owner_auth": "s3cr3t"}}}, tmp_path, tmp_path)
    assert "s3cr3t" not in repr(settings)


def test_a_handle_verified_once_still_expires_and_its_tampered_twin_still_fails() -> None:
    """Verified handles are remembered (the MAC is not recomputed per request): the expiry is checked on every use,
    and only the exact string that verified is remembered."""
    codec = KeyHandleCodec(secrets.token_bytes(32))
    now = time.time()
    handle = codec.issue(HandleClaims(KeyKind.KEY_PAIR, "k", "g1", expires=int(now) + 60))
    assert codec.verify(handle, now=now).key_id == "k"
    assert codec.verify(handle, now=now).key_id == "k"  # remembered
    with pytest.raises(InvalidHandle, match="expired"):
        codec.verify(handle, now=now + 61)
    sr, sig = handle.split("&sig=")
    for twin in (f"{sr}&sig={sig[:-2]}AA", f"{sr[:-1]}{'A' if sr[-1] != 'A' else 'B'}&sig={sig}"):
        with pytest.raises(InvalidHandle):
            codec.verify(twin, now=now)
    for i in range(2000):  # the memory stays bounded
        codec.verify(codec.issue(HandleClaims(KeyKind.KEY_PAIR, f"k{i}", "g1")), now=now)
    assert len(codec._verified) <= 1024
