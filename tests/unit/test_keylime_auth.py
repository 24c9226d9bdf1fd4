"""A1 of the break-this review, closed: a holder of any client certificate from the verifier's CA replaced the
bootstrap key and the payload's RevocationNotifier certificate, then forged a revocation the agent acted on (and
muted the verifier's genuine ones). Now a notice is acted on only if the operator's revocation_cert vouches for its
signer, it is a revocation, about this agent, new and not older than the last enrolment or clearing; and the first
bootstrap is pinned until an operator resets it."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import io
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from edgeward.attest.audit import AuditLog
from edgeward.attest.audit_key import AuditKey
from edgeward.config.problems import Problems
from edgeward.keylime.payloads import BootstrapPinned, Payloads, request_reset
from edgeward.keylime.revocation import RevocationCertRefused, check_revocation_cert, event_time
from edgeward.keylime.revoked import RevocationGate
from edgeward.keylime.service import KeylimeAgent
from edgeward.keylime.settings import parse_keylime_settings

UUID = "d432fbb3-d2f1-4a97-9ef7-75bd81c00000"
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
OAEP = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)  # Keylime's wire format
Issued = tuple[rsa.RSAPrivateKey, x509.Certificate]


def _issue(cn: str, issuer: Issued | None = None, *, ca: bool = False) -> Issued:
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer[1].subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return key, builder.sign(issuer[0] if issuer else key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _bootstrap(pubkey: rsa.RSAPublicKey, notifier: x509.Certificate | None) -> tuple[dict[str, Any], dict[str, Any],
                                                                                      bytes]:
    """(ukey body, vkey body, K) as keylime_tenant makes them (or anyone who can read the agent's public key)."""
    u, v = os.urandom(32), os.urandom(32)
    k = bytes(a ^ b for a, b in zip(u, v, strict=True))
    ukey: dict[str, Any] = {"encrypted_key": base64.b64encode(pubkey.encrypt(u, OAEP)).decode(),
                            "auth_tag": hmac.new(k, UUID.encode(), hashlib.sha384).hexdigest()}
    if notifier is not None:
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("RevocationNotifier-cert.crt", _pem(notifier))
        iv = os.urandom(16)
        ukey["payload"] = base64.b64encode(iv + AESGCM(k).encrypt(iv, archive.getvalue(), None)).decode()
    return ukey, {"encrypted_key": base64.b64encode(pubkey.encrypt(v, OAEP)).decode()}, k


def _notice(key: rsa.RSAPrivateKey, *, kind: str = "revocation", agent_id: str = UUID,
            when: str | None = None) -> dict[str, str]:
    msg = json.dumps({"type": kind, "agent_id": agent_id, "event_id": "ima.validation.ima-ng.not_in_allowlist",
                      "event_time": when or time.asctime(time.gmtime()), "nonce": os.urandom(4).hex()})
    return {"msg": msg, "signature": base64.b64encode(key.sign(msg.encode(), PSS, hashes.SHA256())).decode()}


class _Device:
    """The agent's notice and payload halves over one state dir, with no TPM and no listener."""

    def __init__(self, tmp_path: Path, revocation_cert: bytes | None, *, verifier_utc_offset: str | int = 0) -> None:
        self.verifier_ca = _issue("verifier CA", ca=True)
        (tmp_path / "ca.pem").write_bytes(_pem(self.verifier_ca[1]))
        table = {"registrar_url": "http://127.0.0.1:1", "verifier_ca": str(tmp_path / "ca.pem"),
                 "revocation_action": "stop_modules", "verifier_utc_offset": verifier_utc_offset}
        if revocation_cert is not None:
            (tmp_path / "revocation.pem").write_bytes(revocation_cert)
            table["revocation_cert"] = str(tmp_path / "revocation.pem")
        problems = Problems()
        settings = parse_keylime_settings(table, tmp_path, problems)
        assert settings is not None, problems.items
        self.audit = AuditLog(tmp_path / "audit", AuditKey(bytes(32)))
        self.acted: list[int] = []

        async def stop_modules() -> None:
            self.acted.append(1)

        self.agent = KeylimeAgent(settings, None, self.audit, on_revoked=stop_modules)  # type: ignore[arg-type]
        self.agent.uuid = UUID
        self.nk = rsa.generate_private_key(65537, 2048)
        self.payloads = Payloads(self.agent.home, self.nk, UUID, self.audit)

    def enrol(self, notifier: x509.Certificate | None) -> bytes:
        ukey, vkey, k = _bootstrap(self.nk.public_key(), notifier)
        self.payloads.ukey(ukey)
        self.payloads.vkey(vkey)
        return k

    def kinds(self) -> list[str]:
        return [r.kind for r in self.audit.records(since=0) if r.kind.startswith("keylime.")]

    async def unverified(self) -> list[dict[str, Any]]:
        await self.agent.unverified.flush()
        return [s for r in self.audit.records(since=0) if r.kind == "keylime.revocation_unauthenticated"
                for s in r.detail["first"]]


# who may be believed --------------------------------------------------------------------------------------------
async def test_a_notice_signed_with_a_certificate_only_a_payload_delivered_is_recorded_never_acted_on(
        tmp_path: Path) -> None:
    """The attack as it was: no revocation_cert configured, the attacker's own payload, its own signed notice."""
    dev = _Device(tmp_path, None)
    attacker = _issue("RevocationNotifier")
    dev.enrol(attacker[1])
    await dev.agent.revocation(_notice(attacker[0]))
    assert dev.acted == [] and dev.agent.gate.refusal(dev.audit) is None
    [sample] = await dev.unverified()
    assert sample["authenticated"] is True and sample["trusted"] is False
    assert "never acted on" in sample["check"] and "revocation_cert" in sample["check"]


async def test_a_configured_notifier_certificate_is_believed_whatever_a_payload_delivers(tmp_path: Path) -> None:
    genuine, attacker = _issue("RevocationNotifier"), _issue("RevocationNotifier")
    dev = _Device(tmp_path, _pem(genuine[1]))
    dev.enrol(attacker[1])  # the payload's certificate is not the configured one: it changes nothing
    await dev.agent.revocation(_notice(attacker[0]))
    assert dev.acted == []
    await dev.agent.revocation(_notice(genuine[0]))
    assert dev.acted == [1]
    assert dev.kinds()[-3:] == ["keylime.revocation", "keylime.revoked", "keylime.revocation_acted"]


async def test_a_tenant_ca_vouches_only_for_the_revocation_notifier_it_issued(tmp_path: Path) -> None:
    tenant_ca = _issue("Keylime Certificate Authority", ca=True)
    notifier = _issue("RevocationNotifier", tenant_ca)
    dev = _Device(tmp_path, _pem(tenant_ca[1]))
    for wrong in (_issue("RevocationNotifier"),  # another issuer
                  _issue(UUID, tenant_ca)):  # the tenant CA's certificate for an agent: its key is in that payload
        (dev.agent.home / "bootstrap-pin.json").unlink(missing_ok=True)
        dev.enrol(wrong[1])
        await dev.agent.revocation(_notice(wrong[0]))
        assert dev.acted == []
    samples = await dev.unverified()
    assert "did not issue it" in samples[0]["check"] and "not CN=RevocationNotifier" in samples[1]["check"]
    (dev.agent.home / "bootstrap-pin.json").unlink()
    dev.enrol(notifier[1])
    await dev.agent.revocation(_notice(notifier[0]))
    assert dev.acted == [1]


def test_the_verifier_ca_is_refused_as_the_revocation_certificate(tmp_path: Path) -> None:
    """Every tenant and verifier-side tool holds a certificate from it: any of them could sign notices."""
    verifier_ca = _issue("verifier CA", ca=True)
    (tmp_path / "same.pem").write_bytes(_pem(verifier_ca[1]))
    with pytest.raises(RevocationCertRefused, match=r"edgeward\.keylime\.revocation_cert.*verifier's CA"):
        check_revocation_cert(tmp_path / "same.pem", verifier_ca[1])
    with pytest.raises(RevocationCertRefused, match="cannot be read"):
        check_revocation_cert(tmp_path / "absent.pem", verifier_ca[1])
    (tmp_path / "tenant.pem").write_bytes(_pem(_issue("tenant CA", ca=True)[1]))
    assert check_revocation_cert(tmp_path / "tenant.pem", verifier_ca[1]).subject.rfc4514_string() == "CN=tenant CA"


# what is acted on -----------------------------------------------------------------------------------------------
async def test_only_a_revocation_about_this_agent_is_acted_on(tmp_path: Path) -> None:
    notifier = _issue("RevocationNotifier")
    dev = _Device(tmp_path, _pem(notifier[1]))
    await dev.agent.revocation(_notice(notifier[0], kind="comm_error"))  # the verifier sends these too
    other = _notice(notifier[0], agent_id="0" * 8 + UUID[8:])  # to every agent it attests, about another
    await dev.agent.revocation(other)
    assert dev.acted == []
    assert dev.kinds() == ["keylime.notice"]
    [notice] = [r for r in dev.audit.records(since=0) if r.kind == "keylime.notice"]
    assert notice.detail["type"] == "comm_error" and "not 'revocation'" in notice.detail["not_acted_on"]
    [sample] = await dev.unverified()
    assert "about another agent" in sample["check"]
    assert not (dev.agent.home / "revocations-seen.json").exists()  # neither fills the replay memory


async def test_a_genuine_notice_dated_before_the_last_clearing_is_recorded_not_obeyed(tmp_path: Path) -> None:
    notifier = _issue("RevocationNotifier")
    dev = _Device(tmp_path, _pem(notifier[1]))
    old = _notice(notifier[0], when=time.asctime(time.gmtime(time.time() - 2 * 86400)))  # captured two days ago
    await dev.agent.revocation(_notice(notifier[0]))
    assert dev.acted == [1]
    RevocationGate(dev.agent.home).request_clear()
    assert dev.agent.gate.refusal(dev.audit) is None  # the daemon takes the clearing up
    await dev.agent.revocation(old)
    await dev.agent.revocation(_notice(notifier[0], when="yesterday"))
    assert dev.acted == [1] and dev.agent.gate.refusal(dev.audit) is None
    stale = [r.detail for r in dev.audit.records(since=0) if r.kind == "keylime.revocation_stale"]
    assert [("dated before" in s["not_acted_on"], "not a time" in s["not_acted_on"]) for s in stale] == \
        [(True, False), (False, True)]
    await dev.agent.revocation(_notice(notifier[0]))  # a new one is obeyed
    assert dev.acted == [1, 1]


def test_event_time_reads_keylimes_asctime() -> None:
    assert event_time({"event_time": "Thu Dec  3 06:01:02 2026"}) == datetime.datetime(
        2026, 12, 3, 6, 1, 2, tzinfo=datetime.UTC).timestamp()
    for bad in ("2026-12-03T06:01:02Z", "Thu Foo  3 06:01:02 2026", "Thu Dec 3 6:1 2026", None, 7):
        assert event_time({"event_time": bad}) is None


# the bootstrap is pinned ----------------------------------------------------------------------------------------
def test_the_first_bootstrap_is_pinned_against_any_other_clients_halves(tmp_path: Path) -> None:
    genuine, attacker = _issue("RevocationNotifier"), _issue("RevocationNotifier")
    dev = _Device(tmp_path, None)
    u, v, k = _bootstrap(dev.nk.public_key(), genuine[1])
    dev.payloads.ukey(u)
    dev.payloads.vkey(v)
    delivered = (dev.agent.home / "revocation-cert.pem").read_bytes()
    evil_u, evil_v, _ = _bootstrap(dev.nk.public_key(), attacker[1])
    for post in (lambda: dev.payloads.ukey(evil_u), lambda: dev.payloads.vkey(evil_v)):
        with pytest.raises(BootstrapPinned, match="edgeward attest keylime-reset-bootstrap"):
            post()
    dev.payloads.vkey(v)  # the verifier re-sending its V (after a restart of its own) is no conflict
    assert dev.payloads.verify("c") == hmac.new(k, b"c", hashlib.sha384).hexdigest()
    assert (dev.agent.home / "revocation-cert.pem").read_bytes() == delivered
    restarted = Payloads(dev.agent.home, dev.nk, UUID, dev.audit)  # the pin outlives Edgeward
    with pytest.raises(BootstrapPinned):
        restarted.ukey(evil_u)
    assert dev.kinds() == ["keylime.bootstrap_pinned"]


def test_an_operator_reset_lets_the_next_enrolment_in_and_is_recorded(tmp_path: Path) -> None:
    dev = _Device(tmp_path, None)
    dev.enrol(None)
    assert request_reset(dev.agent.home) is not None  # the CLI's half
    k = dev.enrol(None)  # keylime_tenant -c update: a new U, then the verifier's new V
    assert dev.payloads.verify("c") == hmac.new(k, b"c", hashlib.sha384).hexdigest()
    assert dev.kinds() == ["keylime.bootstrap_pinned", "keylime.bootstrap_reset", "keylime.bootstrap_pinned"]
    reset = next(r for r in dev.audit.records(since=0) if r.kind == "keylime.bootstrap_reset")
    assert reset.detail["by_uid"] == os.getuid()
    with pytest.raises(BootstrapPinned):  # pinned again
        dev.enrol(None)
    assert request_reset(tmp_path / "nothing-here") is None


def test_stop_modules_without_a_revocation_cert_is_flagged_as_without_effect(tmp_path: Path) -> None:
    from edgeward.cli.check import split_warnings

    problems = Problems()
    table = {"registrar_url": "http://127.0.0.1:1", "verifier_ca": str(tmp_path / "ca.pem"),
             "revocation_action": "stop_modules"}
    assert parse_keylime_settings(table, tmp_path, problems) is not None
    no_effect, _ = split_warnings(tuple(problems.warnings))  # `edgeward check` shows it as its own row
    assert [path for path, _ in no_effect] == ["edgeward.keylime.revocation_action"]
    assert "never acted on" in no_effect[0][1]
    quiet = Problems()
    parse_keylime_settings({**table, "revocation_cert": str(tmp_path / "r.pem")}, tmp_path, quiet)
    assert not quiet.warnings


# a full disk -----------------------------------------------------------------------------------------------------
async def test_a_genuine_revocation_is_acted_on_when_nothing_can_be_written(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The review's A4 run: with the state file system full the replay list and the audit log refused their writes,
    the verifier's one notice raised, and the modules kept running. Fail closed: act, remember the notice in memory,
    and refuse its replay all the same."""
    import errno
    import sqlite3

    from edgeward.keylime import notices

    genuine = _issue("RevocationNotifier")
    dev = _Device(tmp_path, _pem(genuine[1]))
    dev.enrol(genuine[1])

    def disk_full(*_a: Any, **_k: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    def audit_full(*_a: Any, **_k: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(notices, "atomic_write", disk_full)
    monkeypatch.setattr(dev.audit, "append", audit_full)
    monkeypatch.setattr(dev.agent.gate, "revoke", disk_full)
    notice = _notice(genuine[0])
    await dev.agent.revocation(notice)
    assert dev.acted == [1]
    await dev.agent.revocation(notice)  # the same signed notice again: remembered in memory
    assert dev.acted == [1]


async def test_the_unverified_tally_survives_an_audit_log_that_cannot_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from edgeward.keylime.notice_tally import UnverifiedTally

    audit = AuditLog(tmp_path / "audit", AuditKey(bytes(32)))
    tally = UnverifiedTally(audit, window=0.01)
    real_append = audit.append
    calls: list[str] = []

    def append(kind: str, module: str | None = None, detail: Any = None) -> Any:
        calls.append(kind)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        return real_append(kind, module, detail)

    monkeypatch.setattr(audit, "append", append)
    task = asyncio.create_task(tally.run())
    try:
        tally.add({"msg": "a", "signature": "b"}, {"check": "unsigned"})
        while len(calls) < 1:
            await asyncio.sleep(0.01)
        tally.add({"msg": "c", "signature": "d"}, {"check": "unsigned"})
        async with asyncio.timeout(5):
            while len(calls) < 2:
                await asyncio.sleep(0.01)
        assert not task.done()
        [record] = [r for r in audit.records(since=0) if r.kind == "keylime.revocation_unauthenticated"]
        assert record.detail["notices"] == 2  # the summary that could not be written is carried into the next
    finally:
        task.cancel()


# N3 of the second review: a bare-U flood kept the genuine bootstrap from ever combining ----------------------------
def test_a_bare_u_flood_from_another_client_does_not_keep_the_tenants_u_from_combining(tmp_path: Path) -> None:
    """The review's run: a U of its own (no payload) every 100 ms overwrote the tenant's; the verifier's V then met
    the attacker's U and was answered 200 all the same: no pin, no payload, no notifier certificate, nothing said."""
    dev = _Device(tmp_path, None)
    notifier = _issue("RevocationNotifier")
    u, v, k = _bootstrap(dev.nk.public_key(), notifier[1])
    dev.payloads.ukey(u, peer="tenant")
    for peer in ("attacker", "attacker", "tenant", "attacker"):  # the tenant and verifier may share one certificate
        bare, _, _ = _bootstrap(dev.nk.public_key(), None)
        dev.payloads.ukey(bare, peer=peer)
    dev.payloads.vkey(v, peer="verifier")
    assert dev.payloads.verify("c") == hmac.new(k, b"c", hashlib.sha384).hexdigest()
    assert dev.payloads.pinned() and (dev.agent.home / "revocation-cert.pem").read_bytes() == _pem(notifier[1])
    assert dev.kinds() == ["keylime.bootstrap_pinned"]


def test_a_v_that_combines_with_no_u_is_refused_and_recorded(tmp_path: Path) -> None:
    from edgeward.keylime.payloads import BootstrapIncomplete

    dev = _Device(tmp_path, None)
    _, v, _ = _bootstrap(dev.nk.public_key(), None)
    for _ in range(3):
        bare, _, _ = _bootstrap(dev.nk.public_key(), None)
        dev.payloads.ukey(bare, peer="attacker")
    for _ in range(3):  # the verifier posts its V once; anyone else may post many: one record a minute
        with pytest.raises(BootstrapIncomplete, match="bootstrap not completed"):
            dev.payloads.vkey(v, peer="verifier")
    assert not dev.payloads.pinned() and dev.payloads.verify("c") is None
    [record] = [r.detail for r in dev.audit.records(since=0) if r.kind == "keylime.bootstrap_incomplete"]
    assert record["pending_u"] == 3 and record["v_sha256"]


def test_pending_u_halves_are_bounded_per_certificate_and_in_certificates(tmp_path: Path) -> None:
    from edgeward.keylime import payloads as mod

    dev = _Device(tmp_path, None)
    u, v, _ = _bootstrap(dev.nk.public_key(), None)
    dev.payloads.ukey(u, peer="tenant")
    for i in range(mod.PENDING_CERTS + 3):
        for _ in range(mod.PENDING_PER_CERT + 2):
            bare, _, _ = _bootstrap(dev.nk.public_key(), None)
            dev.payloads.ukey(bare, peer=f"attacker-{i}")
    assert dev.payloads.pending() <= mod.PENDING_CERTS * mod.PENDING_PER_CERT
    with pytest.raises(mod.BootstrapIncomplete):  # the oldest certificate's halves went first: the tenant's
        dev.payloads.vkey(v, peer="verifier")


# N2 of the second review: a genuine notice the device never recorded, replayed -----------------------------------
async def test_a_notice_dated_hours_before_a_re_enrolment_is_stale(tmp_path: Path) -> None:
    """(a) EVENT_TIME_SLACK was 13 h: a notice captured 3 h before the operator repaired and re-added the device
    revoked it again."""
    ca = _issue("tenant CA", ca=True)
    notifier = _issue("RevocationNotifier", ca)
    dev = _Device(tmp_path, _pem(ca[1]))
    dev.enrol(notifier[1])
    n0 = _notice(notifier[0], when=time.asctime(time.gmtime(time.time() - 3 * 3600)))
    request_reset(dev.agent.home)
    assert not dev.payloads.pinned()
    dev.enrol(notifier[1])
    await dev.agent.revocation(n0)
    assert dev.acted == [] and dev.agent.gate.refusal(dev.audit) is None
    [stale] = [r.detail for r in dev.audit.records(since=0) if r.kind == "keylime.revocation_stale"]
    assert "verifier_utc_offset" in stale["not_acted_on"]
    await dev.agent.revocation(_notice(notifier[0], when=time.asctime(time.gmtime(time.time() - 300))))
    assert dev.acted == [1]  # within the clock-skew tolerance of the floor


async def test_a_verifier_east_or_west_of_utc_is_read_with_its_offset(tmp_path: Path) -> None:
    notifier = _issue("RevocationNotifier")
    for offset, hours in (("+05:30", 5.5), (-480, -8.0)):
        home = tmp_path / str(offset)
        home.mkdir()
        dev = _Device(home, _pem(notifier[1]), verifier_utc_offset=offset)
        dev.enrol(notifier[1])
        local = time.time() + hours * 3600  # what time.asctime() says on the verifier
        await dev.agent.revocation(_notice(notifier[0], when=time.asctime(time.gmtime(local - 3600))))
        assert dev.acted == []  # an hour before the enrolment, in the verifier's time
        [stale] = [r.detail for r in dev.audit.records(since=0) if r.kind == "keylime.revocation_stale"]
        assert ("UTC+05:30" if hours > 0 else "UTC-08:00") in stale["not_acted_on"]
        await dev.agent.revocation(_notice(notifier[0], when=time.asctime(time.gmtime(local))))
        assert dev.acted == [1]


def test_verifier_utc_offset_is_hours_and_minutes_or_minutes(tmp_path: Path) -> None:
    table = {"registrar_url": "http://127.0.0.1:1", "verifier_ca": str(tmp_path / "ca.pem")}
    for raw, minutes in (("+01:00", 60), ("-05:30", -330), ("00:00", 0), (120, 120), (-720, -720)):
        problems = Problems()
        settings = parse_keylime_settings({**table, "verifier_utc_offset": raw}, tmp_path, problems)
        assert settings is not None and settings.verifier_utc_offset == minutes, (raw, problems.items)
    for bad in ("+1", "UTC+1", "+15:00", 900, "+01:75", True):
        problems = Problems()
        parse_keylime_settings({**table, "verifier_utc_offset": bad}, tmp_path, problems)
        assert [i for i in problems.items if "verifier_utc_offset" in i], bad
    defaults = parse_keylime_settings(table, tmp_path, Problems())
    assert defaults is not None and defaults.verifier_utc_offset == 0


async def test_a_signed_notice_recorded_before_revocation_cert_was_set_is_not_obeyed_when_replayed(
        tmp_path: Path) -> None:
    """(b) A notice that verified with the payload's certificate while no revocation_cert was set was only tallied;
    its digest never entered the seen-list, so once the operator configured revocation_cert the same notice
    replayed was acted on."""
    notifier = _issue("RevocationNotifier")
    before = _Device(tmp_path, None)
    before.enrol(notifier[1])
    n0 = _notice(notifier[0])
    await before.agent.revocation(n0)
    junk = _issue("RevocationNotifier")
    await before.agent.revocation(_notice(junk[0]))  # does not verify: never remembered
    await before.agent.revocation(_notice(notifier[0], agent_id="0" * 8 + UUID[8:]))  # another agent's: neither
    assert len(json.loads((before.agent.home / "revocations-seen-untrusted.json").read_bytes())) == 1
    before.audit.close()
    after = _Device(tmp_path, _pem(notifier[1]))
    await after.agent.revocation(n0)
    assert after.acted == []
    assert after.kinds()[-1] == "keylime.revocation_replayed"
    await after.agent.revocation(_notice(notifier[0]))
    assert after.acted == [1]


def test_a_tenant_ca_with_no_delivered_notifier_certificate_is_a_settings_warning(tmp_path: Path) -> None:
    """With revocation_cert = the tenant CA and no payload delivered (the bootstrap never completed) no notice can
    be acted on: `edgeward check` and the daemon's start say so."""
    ca = _issue("tenant CA", ca=True)
    (tmp_path / "ca.pem").write_bytes(_pem(ca[1]))
    table = {"registrar_url": "http://127.0.0.1:1", "verifier_ca": str(tmp_path / "v.pem"),
             "revocation_action": "stop_modules", "revocation_cert": str(tmp_path / "ca.pem")}
    problems = Problems()
    settings = parse_keylime_settings(table, tmp_path, problems)
    assert settings is not None
    from edgeward.cli.check import split_warnings

    [warning] = problems.warnings
    assert warning.startswith("edgeward.keylime.revocation_cert: ") and "--verify" in warning
    assert split_warnings((warning,)) == ([], [warning])  # `edgeward check`'s configuration row, not "no effect"
    settings.state_dir.mkdir(parents=True)
    (settings.state_dir / "revocation-cert.pem").write_bytes(_pem(_issue("RevocationNotifier", ca)[1]))
    quiet = Problems()
    parse_keylime_settings(table, tmp_path, quiet)
    assert not quiet.warnings


async def test_a_floor_set_while_the_clock_ran_ahead_does_not_make_genuine_notices_stale(tmp_path: Path) -> None:
    """N2b of the third review: the floor only rises, so one set while this device's clock was 30 days ahead (a bad
    RTC, a spoofed time source) made every genuine notice "stale" once the clock was put right."""
    from edgeward.keylime.revocation import raise_notice_floor

    notifier = _issue("RevocationNotifier")
    dev = _Device(tmp_path, _pem(notifier[1]))
    raise_notice_floor(dev.agent.home, time.time() + 30 * 86400, "enrolled while the clock ran ahead")
    await dev.agent.revocation(_notice(notifier[0]))
    assert dev.acted == [1]
