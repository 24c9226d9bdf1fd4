"""The keys API's hand-written body checks against the pydantic models they replaced, kept here as the oracle: for
any JSON object, both accept it with the same values or both refuse it with the same 422 message; responses are
the same bytes. (The models are the ones keys/wire.py held until the keys service stopped importing pydantic.)"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Annotated, Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError

from edgeward.http.wirefields import InvalidBody, decode_b64
from edgeward.keys import wire
from tests.unit.wire_oracle import describe as _describe

B64 = Annotated[bytes, BeforeValidator(decode_b64),
                PlainSerializer(lambda b: base64.b64encode(b).decode(), return_type=str)]


class _Body(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", strict=False, frozen=True)


class KeyHandleRequest(_Body):
    key_handle: str = Field(alias="keyHandle", max_length=8192)


class CreateKeyPairRequest(_Body):
    key_id: str = Field(alias="keyId")
    preferred_algorithms: str | None = Field(
        default=None, alias="preferredAlgorithms",
        validation_alias=AliasChoices("preferredAlgorithms", "preferred_algorithms"))
    handle_ttl_seconds: int | None = Field(default=None, alias="handleTtlSeconds")


class MoveKeyPairRequest(_Body):
    src: str = Field(alias="from")
    dst: str | None = Field(default=None, alias="to")


def _check_usage(value: object) -> object:
    if isinstance(value, str):
        bad = [u for u in value.split(",") if u not in ("derive", "encrypt", "sign")]
        if bad:
            raise ValueError(f"unknown key usage {bad[0]!r}; expected derive, encrypt or sign, comma-separated")
    return value


class CreateKeyRequest(_Body):
    key_id: str = Field(alias="keyId")
    usage: Annotated[str | None, BeforeValidator(_check_usage)] = None
    length_bytes: int | None = Field(default=None, alias="lengthBytes")
    key_bytes: B64 | None = Field(default=None, alias="keyBytes")
    handle_ttl_seconds: int | None = Field(default=None, alias="handleTtlSeconds")


class DeriveKeyRequest(_Body):
    base_handle: str = Field(alias="baseKeyHandle", max_length=8192)
    derivation_data: B64 = Field(alias="derivationData")


class SignRequest(_Body):
    key_handle: str = Field(alias="keyHandle", max_length=8192)
    algorithm: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class CryptRequest(_Body):
    key_handle: str = Field(alias="keyHandle", max_length=8192)
    algorithm: str
    parameters: dict[str, Any] | None = None
    plaintext: B64 | None = None
    ciphertext: B64 | None = None


class KeyHandleResponse(_Body):
    key_handle: str = Field(alias="keyHandle")


class ParameterResponse(_Body):
    value: str


class SignResponse(_Body):
    signature: B64


ORACLES: list[tuple[type[_Body], Any]] = [
    (KeyHandleRequest, wire.KeyHandleRequest),
    (CreateKeyPairRequest, wire.CreateKeyPairRequest),
    (MoveKeyPairRequest, wire.MoveKeyPairRequest),
    (CreateKeyRequest, wire.CreateKeyRequest),
    (DeriveKeyRequest, wire.DeriveKeyRequest),
    (SignRequest, wire.SignRequest),
    (CryptRequest, wire.CryptRequest),
]
NAMES = sorted({n for model, _ in ORACLES for name, f in model.model_fields.items()
                for n in (name, f.alias, "preferred_algorithms") if n})

# Strings that reach every branch of the lax int parsing, base64 and usage checks, plus arbitrary text.
numeric = st.text(alphabet="0123456789+-._ \t\x1c\x85\u3000e", max_size=12)
long_numeric = st.builds(lambda a, n, b: a + "1" * n + b, st.sampled_from(["", "-", "+", " ", "1_"]),
                         st.integers(4290, 4310), st.sampled_from(["", ".0", ".", "_1", "x", " ", ".00"]))
b64_text = st.text(alphabet="ABCab01+/=_-* ", max_size=12)
usage = st.lists(st.sampled_from(["derive", "encrypt", "sign", "", "Sign", "x"]), min_size=1, max_size=3).map(",".join)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([9.2e18, 9.3e18, -2.0**63, 2.0**63, 5.0, -0.0]),
    st.text(max_size=8), numeric, st.text(alphabet="1a_,\ud800\udc00 ", max_size=5),
    st.sampled_from(["sign,\ud800", "\ud800,sign", "\udc00" + "h" * 8192]), long_numeric, b64_text, usage, st.just("h" * 8193), st.just("h" * 8192),
)
values = st.one_of(scalars, st.lists(scalars, max_size=2),
                   st.dictionaries(st.text(alphabet="ab\ud800", max_size=2), scalars, max_size=2))
bodies = st.dictionaries(st.sampled_from([*NAMES, "other"]), values, max_size=6)


def outcome(parse: Any, data: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "ok", parse(data)
    except (InvalidBody, ValidationError) as e:
        return "refused", _describe(e) if isinstance(e, ValidationError) else str(e)


@pytest.mark.parametrize(("model", "ours"), ORACLES, ids=[m.__name__ for m, _ in ORACLES])
@settings(max_examples=400, deadline=None)
@given(data=bodies)
@example(data={"keyId": "a", "handleTtlSeconds": "1" * 4300 + "_1"})
@example(data={"keyId": "a", "key_id": 5, "handleTtlSeconds": " +5_0.00 ", "preferred_algorithms": 1})
@example(data={"keyHandle": "h", "algorithm": "ECDSA", "parameters": None, "plaintext": None, "from": 1, "to": 2})
def test_keys_bodies_are_accepted_and_refused_as_the_pydantic_models_did(model: type[_Body], ours: Any,
                                                                       data: dict[str, Any]) -> None:
    expected, got = outcome(model.model_validate, data), outcome(ours.parse, data)
    assert got[0] == expected[0], (expected, got)
    if got[0] == "refused":
        assert got[1] == expected[1]
    else:
        assert dataclasses.asdict(got[1]) == dict(expected[1])


text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20)


@settings(max_examples=200, deadline=None)
@given(handle=text, value=text, signature=st.binary(max_size=80))
def test_keys_responses_are_the_bytes_pydantic_wrote(handle: str, value: str, signature: bytes) -> None:
    def dumped(m: BaseModel) -> bytes:
        return m.model_dump_json(by_alias=True, exclude_none=True).encode()

    assert wire.KeyHandleResponse(handle).to_json() == dumped(KeyHandleResponse(key_handle=handle))
    assert wire.ParameterResponse(value).to_json() == dumped(ParameterResponse(value=value))
    assert wire.SignResponse(signature).to_json() == dumped(SignResponse(signature=signature))
    assert wire.KeyHandleResponse.parse(wire.KeyHandleResponse(handle).to_json()).key_handle == handle
    assert wire.SignResponse.parse(wire.SignResponse(signature).to_json()).signature == signature


@pytest.mark.parametrize("raw", [b"", b"[]", b"{}", b'{"signature": 5}', b'{"signature": "***"}'])
def test_keys_client_refuses_a_malformed_answer_as_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError, match="invalid response body"):
        wire.SignResponse.parse(raw)


def test_keys_request_reprs_leave_out_key_material() -> None:
    body = wire.CreateKeyRequest.parse({"keyId": "k", "keyBytes": "c2VjcmV0"})
    assert body.key_bytes == b"secret" and "secret" not in repr(body) and "c2VjcmV0" not in repr(body)
    assert json.loads(wire.SignResponse(b"\x00").to_json()) == {"signature": "AA=="}


def _b64decode_validated(value: str) -> bytes | None:
    """What the keys wire decoded with before (base64.b64decode(validate=True)); None for a refusal."""
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return None


@settings(max_examples=2000, deadline=None)
@given(value=st.text(alphabet="AQgw09+/=\n é-_\ud800", max_size=12) | st.text(max_size=12))
@example(value="YQ==")
@example(value="YQ=")
@example(value="YWJj=")
@example(value="YQ==YQ==")
def test_keys_base64_accepts_exactly_what_b64decode_validate_did(value: str) -> None:
    try:
        ours: bytes | None = decode_b64(value)
    except ValueError:
        ours = None
    assert ours == _b64decode_validated(value)
