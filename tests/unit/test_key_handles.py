"""The key handle parser, by property: whatever string a caller sends, the codec answers with the claims of a handle
it issued or with InvalidHandle (the keys service's 401) - never another exception, never a second reading."""

from __future__ import annotations

import base64
import secrets

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from edgeward.keys.errors import InvalidHandle
from edgeward.keys.handles import MAX_HANDLE_LENGTH, HandleClaims, KeyHandleCodec
from edgeward.keys.model import KeyKind

CODEC = KeyHandleCodec(b"k" * 32)
CLAIMS = HandleClaims(KeyKind.DERIVED, "edgeward-identity-principal-agent", "g1", None, b"agent:gen:primary")
ISSUED = CODEC.issue(CLAIMS)
SR, SIG = ISSUED.removeprefix("sr=").split("&sig=")

B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
fields = st.sampled_from(["sr", "sig", "se", "skn", "", "SR", "Sig", "sr ", " sig"])
values = st.one_of(st.text(max_size=60), st.text(alphabet=B64_CHARS, max_size=60), st.just(SR), st.just(SIG))
field_lists = st.lists(st.tuples(fields, st.sampled_from(["=", "", "=="]), values), max_size=5)


def outcome(codec: KeyHandleCodec, text: str) -> HandleClaims | None:
    """The claims, or None for the 401; anything else escapes and fails the test."""
    try:
        return codec.verify(text)
    except InvalidHandle:
        return None


@given(st.text(max_size=400))
@example("sr=AAAA&sig=\u00e9")
@example(f"sr={SR}&sig={SIG}\u00e9")
@example(f"sr={SR}&sig=\ud800")
@example(f"sr={SR}\ud800&sig={SIG}")
@example(f"sr={SR}&sig={SIG}&sig={SIG}")
@example(f"sr={SR}&sr={SR}&sig={SIG}")
@example(f"sig={SIG}&sr={SR}")
@example(f"sr={SR}&sig={SIG}\n")
def test_any_string_is_the_issued_handle_or_refused(text: str) -> None:
    got = outcome(CODEC, text)
    assert got is None or (text == ISSUED and got == CLAIMS)


@given(field_lists)
def test_any_arrangement_of_fields_is_the_issued_handle_or_refused(parts: list[tuple[str, str, str]]) -> None:
    text = "&".join(f"{name}{eq}{value}" for name, eq, value in parts)
    got = outcome(CODEC, text)
    assert got is None or (text == ISSUED and got == CLAIMS)


@given(st.text(min_size=1, max_size=20), st.sampled_from(["prefix", "suffix", "sr", "sig", "both"]))
def test_the_issued_handle_with_anything_added_is_refused(extra: str, where: str) -> None:
    text = {"prefix": extra + ISSUED, "suffix": ISSUED + extra, "sr": f"sr={SR}{extra}&sig={SIG}",
            "sig": f"sr={SR}&sig={SIG}{extra}", "both": f"{ISSUED}&sig={SIG}{extra}"}[where]
    assert outcome(CODEC, text) is None


@given(st.binary(max_size=300))
def test_any_bytes_as_text_are_refused(raw: bytes) -> None:
    assert outcome(CODEC, raw.decode("utf-8", "surrogateescape")) in (None, CLAIMS)


def test_a_repeated_sig_is_refused_even_when_every_copy_is_right() -> None:
    with pytest.raises(InvalidHandle, match="exactly"):
        CODEC.verify(f"{ISSUED}&sig={SIG}")
    with pytest.raises(InvalidHandle, match="exactly"):
        CODEC.verify(f"sr={SR}&{ISSUED}")


def test_a_non_ascii_sig_is_refused_with_the_handle_error() -> None:
    with pytest.raises(InvalidHandle):
        CODEC.verify(f"sr={SR}&sig=" + "\u00e9" * len(SIG))


def test_over_long_and_non_string_handles_are_refused() -> None:
    with pytest.raises(InvalidHandle):
        CODEC.verify("sr=" + "A" * MAX_HANDLE_LENGTH + "&sig=" + SIG)
    with pytest.raises(InvalidHandle):
        CODEC.verify(None)  # type: ignore[arg-type]


def test_a_handle_issued_with_another_mac_key_is_refused() -> None:
    other = KeyHandleCodec(secrets.token_bytes(32)).issue(CLAIMS)
    assert outcome(CODEC, other) is None
    assert base64.b64decode(other.removeprefix("sr=").split("&sig=")[0])  # same shape, only the MAC differs
