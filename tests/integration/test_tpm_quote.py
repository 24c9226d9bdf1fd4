"""Self-measurement anchored in a real (software) TPM: PCR extend, quote with a caller's nonce, verification —
and the ways a verifier must refuse (wrong nonce, other PCR value, forged signature)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os

import pytest

from edgeward.attest.tpm_quote import DEFAULT_PCR, extend, quote, verify_quote
from tests.fixtures.swtpm import Swtpm

os.environ.setdefault("TSS2_LOG", "all+NONE")


def test_extend_then_quote_verifies(fresh_swtpm: Swtpm) -> None:
    m1, m2 = hashlib.sha256(b"code+config 1").digest(), hashlib.sha256(b"code+config 2").digest()
    v1 = bytes.fromhex(extend(fresh_swtpm.tcti, m1))
    assert v1 == hashlib.sha256(b"\0" * 32 + m1).digest()  # PCR 23 starts at zero
    v2 = bytes.fromhex(extend(fresh_swtpm.tcti, m2))
    assert v2 == hashlib.sha256(v1 + m2).digest()
    nonce = os.urandom(20)
    q = quote(fresh_swtpm.tcti, nonce)
    assert q.pcr == DEFAULT_PCR and bytes.fromhex(q.pcr_value) == v2
    verify_quote(q, nonce, v2)
    again = quote(fresh_swtpm.tcti, os.urandom(20))
    assert again.ak_public_pem == q.ak_public_pem  # the same attestation key every time: a verifier pins it


def test_verifier_refuses_replay_wrong_state_and_forgery(fresh_swtpm: Swtpm) -> None:
    extend(fresh_swtpm.tcti, hashlib.sha256(b"x").digest())
    nonce = os.urandom(16)
    q = quote(fresh_swtpm.tcti, nonce)
    value = bytes.fromhex(q.pcr_value)
    with pytest.raises(ValueError, match="nonce"):
        verify_quote(q, os.urandom(16), value)
    with pytest.raises(ValueError, match="PCR value"):
        verify_quote(q, nonce, b"\1" * 32)
    raw = bytearray(base64.b64decode(q.attest))
    raw[-1] ^= 1
    forged = dataclasses.replace(q, attest=base64.b64encode(bytes(raw)).decode())
    with pytest.raises(ValueError, match="signature"):
        verify_quote(forged, nonce, value)
    with pytest.raises(ValueError, match="nonce must be"):
        quote(fresh_swtpm.tcti, b"")
