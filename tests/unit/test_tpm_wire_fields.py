"""The TPM API's hand-written body checks against the pydantic models they replaced (kept here as the oracle): any
JSON object is accepted with the same values or refused with the same 422 message; answers (and the client's
requests) are the same bytes, and the client reads back what the service wrote."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from edgeward.tpm import wire
from tests.unit.wire_oracle import B64, same_outcome


class QuoteRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    nonce: B64
    pcr: int = 23


class QuoteResponse(BaseModel):
    model_config = ConfigDict(frozen=True)
    pcr: int
    pcr_value: str
    nonce: str
    attest: str
    signature: str
    ak_public_pem: str


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class GetTpmKeysResponse(_Body):
    endorsement_key: B64
    storage_root_key: B64


class ImportAuthKeyRequest(_Body):
    key: B64


class ImportAuthKeyResponse(_Body):
    pass


class SignWithAuthKeyRequest(_Body):
    data: B64


class SignWithAuthKeyResponse(_Body):
    digest: B64


class AuditCounterResponse(BaseModel):
    model_config = ConfigDict(frozen=True)
    value: int | None = None


NAMES = ["nonce", "pcr", "key", "data", "other"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(), st.text(max_size=6), st.text(alphabet="ABab01+/= _.-", max_size=9),
                    st.sampled_from(["YQ==", "AAAA", " 23 ", "2_3", "23.00", "1e1", "\ud800", "x" * 1_000_001]))
bodies = st.dictionaries(st.sampled_from(NAMES), st.one_of(scalars, st.lists(scalars, max_size=2),
                                                           st.dictionaries(st.text(max_size=2), scalars, max_size=2)),
                         max_size=5)


@pytest.mark.parametrize(("model", "ours"), [(QuoteRequest, wire.QuoteRequest.parse),
                                             (ImportAuthKeyRequest, wire.ImportAuthKeyRequest.parse),
                                             (SignWithAuthKeyRequest, wire.SignWithAuthKeyRequest.parse)],
                         ids=["quote", "import-auth-key", "sign-with-auth-key"])
@settings(max_examples=500, deadline=None)
@given(data=bodies)
@example(data={"nonce": None, "pcr": None})
@example(data={"nonce": "YQ==", "pcr": "  7.000 "})
@example(data={"nonce": "YQ=", "pcr": 7.5})
def test_tpm_bodies_are_accepted_and_refused_as_the_pydantic_models_did(model: type[BaseModel], ours: Any,
                                                                      data: dict[str, Any]) -> None:
    same_outcome(model, ours, data)


def _dumped(m: BaseModel) -> bytes:
    return m.model_dump_json(by_alias=True, exclude_none=True).encode()


text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)


@settings(max_examples=200, deadline=None)
@given(a=st.binary(max_size=40), b=st.binary(max_size=40), pcr=st.integers(-(2**63), 2**63 - 1),
       value=st.none() | st.integers(0, 2**64), s=st.tuples(text, text, text, text, text))
def test_tpm_bodies_are_the_bytes_pydantic_wrote(a: bytes, b: bytes, pcr: int, value: int | None,
                                                 s: tuple[str, str, str, str, str]) -> None:
    pairs: list[tuple[Any, BaseModel]] = [
        (wire.QuoteRequest(a, pcr), QuoteRequest(nonce=a, pcr=pcr)),
        (wire.QuoteResponse(pcr, *s), QuoteResponse(pcr=pcr, pcr_value=s[0], nonce=s[1], attest=s[2],
                                                    signature=s[3], ak_public_pem=s[4])),
        (wire.GetTpmKeysResponse(a, b), GetTpmKeysResponse(endorsement_key=a, storage_root_key=b)),
        (wire.ImportAuthKeyRequest(a), ImportAuthKeyRequest(key=a)),
        (wire.ImportAuthKeyResponse(), ImportAuthKeyResponse()),
        (wire.SignWithAuthKeyRequest(a), SignWithAuthKeyRequest(data=a)),
        (wire.SignWithAuthKeyResponse(b), SignWithAuthKeyResponse(digest=b)),
        (wire.AuditCounterResponse(value), AuditCounterResponse(value=value)),
    ]
    for ours, model in pairs:
        assert ours.to_json() == _dumped(model), type(ours).__name__
    for response in pairs[1:]:
        ours = response[0]
        if hasattr(type(ours), "parse") and type(ours).__name__.endswith("Response"):
            assert type(ours).parse(ours.to_json()) == ours


@pytest.mark.parametrize(("parse", "raw"), [
    (wire.GetTpmKeysResponse.parse, b'{"endorsement_key": "AA==", "storage_root_key": null}'),
    (wire.SignWithAuthKeyResponse.parse, b'{"digest": "***"}'),
    (wire.QuoteResponse.parse, b'{"pcr": "x"}'),
    (wire.AuditCounterResponse.parse, b'{"value": 1.5}'),
    (wire.ImportAuthKeyResponse.parse, b"[]"),
    (wire.AuditCounterResponse.parse, b"not json"),
])
def test_tpm_client_refuses_a_malformed_answer_as_a_value_error(parse: Any, raw: bytes) -> None:
    with pytest.raises(ValueError, match="invalid response body"):
        parse(raw)


def test_tpm_request_reprs_leave_out_the_auth_key() -> None:
    assert "c2VjcmV0" not in repr(wire.ImportAuthKeyRequest.parse({"key": "c2VjcmV0"}))
    assert "secret" not in repr(wire.ImportAuthKeyRequest(b"secret"))
