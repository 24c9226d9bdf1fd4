"""SAS tokens: what the device builds verifies as the services verify it, whatever encoding the sender used."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeward.identity.sas import SasError, make_token, parse_token, verify_token

KEY = b"k" * 32


async def _sign(data: bytes) -> bytes:
    return hmac.new(KEY, data, hashlib.sha256).digest()


async def test_round_trip_and_refusals() -> None:
    token = parse_token(await make_token("MyHub.example/devices/Dev-1", _sign, 60))
    verify_token(token, "myhub.example/devices/dev-1", KEY)
    verify_token(token, "myhub.example/devices/dev-1/modules/m", KEY)  # a device token covers its modules
    with pytest.raises(SasError, match="not for"):
        verify_token(token, "myhub.example/devices/other", KEY)
    with pytest.raises(SasError, match="does not verify"):
        verify_token(token, "myhub.example/devices/dev-1", b"x" * 32)
    with pytest.raises(SasError, match="expired"):
        verify_token(token, "myhub.example/devices/dev-1", KEY, now=time.time() + 120)


def test_aziot_style_token_with_unencoded_slashes_verifies() -> None:
    resource, expiry = "myhub.example/devices/dev-1", str(int(time.time()) + 60)
    sig = base64.b64encode(hmac.new(KEY, f"{resource}\n{expiry}".encode(), hashlib.sha256).digest()).decode()
    token = parse_token(f"SharedAccessSignature sr={resource}&sig={quote_plus(sig)}&se={expiry}&skn=registration")
    assert token.key_name == "registration"
    verify_token(token, "myhub.example/devices/dev-1", KEY)


@given(st.text(max_size=200))
def test_parser_raises_only_its_own_error(text: str) -> None:
    try:
        parse_token("SharedAccessSignature " + text)
    except SasError:
        pass
