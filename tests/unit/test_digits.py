"""Numbers taken as text from callers, servers and config files. Found by the session-11 review: str.isdigit() is
true of "²", which int() then refuses (a 500, or an exception escaping a client), and of other scripts' digits,
which int() reads as numbers ("١٢" is 12)."""

from __future__ import annotations

import pytest

from edgeward.certs.est.client import _retry_after as est_retry_after
from edgeward.certs.est.pkcs7 import EstError
from edgeward.digits import is_number, number_or_none
from edgeward.identity.dps import _retry_after as dps_retry_after
from edgeward.keys.uri import KeyUriError, parse_key_uri
from edgeward.runtime.durations import BadTime, parse_since

ODD = ("²", "\u0661\u0662", "\uff11\uff12", "", "-1", "+1", "1.5", " 1", "9" * 5000)


@pytest.mark.parametrize("text", ODD)
def test_only_ascii_digits_are_numbers(text: str) -> None:
    assert not is_number(text) and number_or_none(text) is None


def test_numbers_and_their_bound() -> None:
    assert is_number("0") and number_or_none("0042") == 42 and number_or_none(None) is None
    assert is_number("9" * 19) and not is_number("9" * 20) and is_number("9" * 20, max_digits=20)


@pytest.mark.parametrize("text", ["²", "\u0661\u0662", "9" * 5000])
def test_a_pkcs11_slot_that_is_not_a_number_is_a_uri_error(text: str) -> None:
    with pytest.raises(KeyUriError, match="slot-id"):
        parse_key_uri(f"pkcs11:slot-id={text}?pin-value=1")


@pytest.mark.parametrize("text", ["²s", "\u0661\u0662s", "9" * 5000 + "s"])
def test_a_duration_in_other_digits_is_refused(text: str) -> None:
    with pytest.raises(BadTime):
        parse_since(text, "since", now=1_700_000_000)


def test_retry_after_from_a_server() -> None:
    assert est_retry_after("120", "https://est") >= 120
    with pytest.raises(EstError):
        est_retry_after("²", "https://est")
    assert dps_retry_after("3") == 3.0 and dps_retry_after("1.5") == 1.5
    assert dps_retry_after("²") is None and dps_retry_after("1.²") is None and dps_retry_after("9" * 5000) is None
