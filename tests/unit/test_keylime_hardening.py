"""Attacks on the Keylime agent from the break-this review, each closed: a revocation that a restart or a deployment
undid, a flood of unverifiable revocation notices, a verifier CA that is not one valid CA."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from edgeward.attest.audit import AuditLog
from edgeward.attest.audit_key import AuditKey
from edgeward.config.problems import Problems
from edgeward.keylime.revoked import CLEAR_COMMAND, RevocationGate
from edgeward.keylime.service import KeylimeAgent
from edgeward.keylime.settings import parse_keylime_settings
from edgeward.keylime.verifier_ca import VerifierCaRefused, check_verifier_ca
from tests.unit.test_keylime_units import UUID, _revocation_pair

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)


class _Counter:
    """A stand-in for the TPM's audit counter that notes which thread moved it (the real one is a TPM command)."""

    description = "test counter"

    def __init__(self) -> None:
        self.value: int | None = None
        self.threads: list[int] = []

    def read(self) -> int | None:
        return self.value

    def increment(self) -> int:
        self.threads.append(threading.get_ident())
        self.value = (self.value or 0) + 1
        return self.value


def _agent(tmp_path: Path, audit: AuditLog, action: str = "stop_modules",
           acted: list[int] | None = None) -> tuple[KeylimeAgent, rsa.RSAPrivateKey]:
    key, pem = _revocation_pair()
    (tmp_path / "revocation.pem").write_bytes(pem)
    problems = Problems()
    settings = parse_keylime_settings({"registrar_url": "http://127.0.0.1:1", "verifier_ca": str(tmp_path / "ca"),
                                       "revocation_cert": str(tmp_path / "revocation.pem"),
                                       "revocation_action": action}, tmp_path, problems)
    assert settings is not None, problems.items

    async def stop_modules() -> None:
        if acted is not None:
            acted.append(1)

    agent = KeylimeAgent(settings, None, audit, on_revoked=stop_modules)  # type: ignore[arg-type] # no TPM needed
    agent.uuid = UUID
    return agent, key


def _signed(key: rsa.RSAPrivateKey, event_time: str = "Wed Dec  2 23:00:00 2026") -> dict[str, str]:
    msg = json.dumps({"type": "revocation", "agent_id": UUID, "event_id": "ima.validation.ima-ng.not_in_allowlist",
                      "event_time": event_time})
    return {"msg": msg, "signature": base64.b64encode(key.sign(msg.encode(), PSS, hashes.SHA256())).decode()}


# 1. a revocation stands until an operator clears it ---------------------------------------------------------------
async def test_a_verified_revocation_keeps_modules_from_starting_across_restarts_until_cleared(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit", AuditKey(bytes(32)))
    acted: list[int] = []
    agent, key = _agent(tmp_path, audit, acted=acted)
    assert agent.gate.refusal(audit) is None
    await agent.revocation(_signed(key))
    assert acted == [1]
    why = agent.gate.refusal(audit)
    assert why is not None and "revoked by its Keylime verifier" in why and CLEAR_COMMAND in why
    # Edgeward restarts: a new gate over the same state dir still refuses
    after_restart = RevocationGate(tmp_path / "keylime")
    assert after_restart.refusal(audit) == why
    # the operator clears it (the CLI's half), and the daemon records that before the next start passes
    assert RevocationGate(tmp_path / "keylime").request_clear() is not None
    assert after_restart.refusal(audit) is None
    cleared = [r for r in audit.records(since=0) if r.kind == "keylime.revocation_cleared"]
    assert len(cleared) == 1 and cleared[0].detail["by_uid"] is not None
    assert cleared[0].detail["digest"] == next(r for r in audit.records() if r.kind == "keylime.revoked").detail["digest"]
    assert RevocationGate(tmp_path / "keylime").refusal(audit) is None  # and stays cleared after another restart


async def test_only_stop_modules_makes_a_revocation_stand(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit", AuditKey(bytes(32)))
    agent, key = _agent(tmp_path, audit, action="record")
    await agent.revocation(_signed(key))
    assert agent.gate.refusal(audit) is None


async def test_deleting_the_revoked_state_offline_clears_nothing(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit", AuditKey(bytes(32)))
    agent, key = _agent(tmp_path, audit)
    await agent.revocation(_signed(key))
    (tmp_path / "keylime" / "revoked.json").unlink()  # someone with the disk, while Edgeward is down
    assert RevocationGate(tmp_path / "keylime").refusal(audit) is not None  # the audit log says it stands
    assert (tmp_path / "keylime" / "revoked.json").exists()


async def test_an_unreadable_revoked_state_refuses(tmp_path: Path) -> None:
    gate = RevocationGate(tmp_path)
    (tmp_path / "revoked.json").write_text("[not an object")
    why = gate.refusal(None)
    assert why is not None and "cannot be read" in why


async def test_a_clear_asked_for_an_earlier_revocation_does_not_clear_a_later_one(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit", AuditKey(bytes(32)))
    agent, key = _agent(tmp_path, audit)
    await agent.revocation(_signed(key))
    agent.gate.request_clear()  # written, not yet taken up by the daemon ...
    await agent.revocation(_signed(key, "Wed Dec  2 23:05:00 2026"))  # ... when the verifier revokes again
    assert agent.gate.refusal(audit) is not None
    assert not [r for r in audit.records(since=0) if r.kind == "keylime.revocation_cleared"]


# 3. unverifiable notices are counted, not each recorded with a TPM increment on the event loop ----------------------
async def test_a_flood_of_unverified_notices_is_one_summary_written_off_the_event_loop(tmp_path: Path) -> None:
    counter = _Counter()
    audit = AuditLog(tmp_path / "audit", AuditKey(bytes(32)), counter)
    audit.append("test.start")
    before, moved = audit.head()[0], len(counter.threads)
    agent, _ = _agent(tmp_path, audit)
    forged = _signed(rsa.generate_private_key(65537, 2048))  # signed, by the wrong key
    for i in range(2000):
        if i % 4 == 0:
            await agent.revocation({"msg": json.dumps({"agent_id": UUID, "n": i % 100}), "signature": ""})
        else:
            await agent.revocation(forged)
    assert audit.head()[0] == before and len(counter.threads) == moved, "nothing written per notice"
    await agent.unverified.flush()
    records = audit.records(since=before)
    assert [r.kind for r in records] == ["keylime.revocation_unauthenticated"]
    detail = records[0].detail
    assert (detail["notices"], detail["distinct"], detail["duplicates"]) == (2000, 26, 1974)
    assert len(detail["first"]) == 3 and detail["authenticated"] is False
    assert counter.threads[moved:] and threading.get_ident() not in counter.threads[moved:]
    assert agent.gate.refusal(audit) is None  # none of it revoked anything


async def test_unverified_notices_are_written_at_once_then_at_most_once_per_window(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit", AuditKey(bytes(32)))
    agent, _ = _agent(tmp_path, audit)
    agent.unverified.window = 3600.0
    task = asyncio.create_task(agent.unverified.run())
    try:
        await agent.revocation({"msg": "{}", "signature": ""})
        async with asyncio.timeout(10):
            while not audit.records(since=0):  # the first is recorded promptly (a worker thread writes it)
                await asyncio.sleep(0.01)
        for _ in range(500):
            await agent.revocation({"msg": "{}", "signature": ""})
        assert len(audit.records(since=0)) == 1  # the window holds the rest back
    finally:
        task.cancel()
    await agent.stop()  # and a stop writes what it held
    kinds = [(r.kind, r.detail["notices"]) for r in audit.records(since=0)]
    assert kinds == [("keylime.revocation_unauthenticated", 1), ("keylime.revocation_unauthenticated", 500)]


# 4. verifier_ca: exactly one currently valid CA certificate ------------------------------------------------------
def _cert(ca: bool | None, days: tuple[int, int] = (-1, 365)) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "verifier CA")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now + datetime.timedelta(days=days[0]))
               .not_valid_after(now + datetime.timedelta(days=days[1])))
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(("content", "why"), [
    (lambda: _cert(True) + _cert(True), "holds 2 certificates"),
    (lambda: b"", "holds 0 certificates"),
    (lambda: _cert(False), "is not a CA"),
    (lambda: _cert(None), "is not a CA"),
    (lambda: _cert(True, (-30, -1)), "expired"),
    (lambda: _cert(True, (2, 30)), "not valid before"),
    (lambda: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "does not parse"),
])
def test_a_verifier_ca_that_is_not_one_valid_ca_is_refused_naming_the_setting(tmp_path: Path, content: Any,
                                                                               why: str) -> None:
    path = tmp_path / "ca.pem"
    path.write_bytes(content())
    with pytest.raises(VerifierCaRefused, match=why) as refused:
        check_verifier_ca(path)
    assert "edgeward.keylime.verifier_ca" in str(refused.value) and str(path) in str(refused.value)


def test_a_missing_verifier_ca_is_refused_and_one_valid_ca_is_taken(tmp_path: Path) -> None:
    with pytest.raises(VerifierCaRefused, match="cannot be read"):
        check_verifier_ca(tmp_path / "absent.pem")
    (tmp_path / "ca.pem").write_bytes(_cert(True))
    assert check_verifier_ca(tmp_path / "ca.pem").subject.rfc4514_string() == "CN=verifier CA"


async def test_the_agent_does_not_start_on_a_bundle_of_cas(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit", AuditKey(bytes(32)))
    agent, _ = _agent(tmp_path, audit)
    (tmp_path / "ca").write_bytes(_cert(True) + _cert(True))  # e.g. a system trust store
    with pytest.raises(VerifierCaRefused, match=r"edgeward\.keylime\.verifier_ca"):
        await agent.start()  # before the TPM (there is none here) or the listener


async def test_a_notice_larger_than_a_notice_is_refused_before_it_is_read(tmp_path: Path) -> None:
    from aiohttp.test_utils import make_mocked_request

    from edgeward.keylime import routes

    audit = AuditLog(tmp_path / "audit", AuditKey(bytes(32)))
    agent, _ = _agent(tmp_path, audit)
    for headers in ({"Content-Length": str(routes.MAX_NOTICE + 1)}, {"Transfer-Encoding": "chunked"}):
        request = make_mocked_request("POST", "/v2.6/notifications/revocation", headers=headers)
        with pytest.raises(routes._Refused) as refused:
            await routes._revocation(agent, request)
        assert refused.value.code == 413
    assert agent.unverified.posted == 0
