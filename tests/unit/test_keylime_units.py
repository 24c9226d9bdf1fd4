"""The Keylime agent's pure parts: wire formats (ima-ng lines, the PCR blob, the registrar's blob), what becomes a
measurement and what the policy allows, settings, payload bootstrap and revocation checks."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import io
import json
import logging
import os
import struct
import zipfile
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgeward.attest.audit import AuditRecord
from edgeward.config.problems import Problems
from edgeward.keylime.entries import entries_of, module_digest
from edgeward.keylime.ima import ImaEntry, replay
from edgeward.keylime.kernel_ima import KernelOwnsPcr10, check_kernel_ima
from edgeward.keylime.payloads import Payloads
from edgeward.keylime.policy import runtime_policy
from edgeward.keylime.quote_format import pcr_blob, pcrs_of_mask
from edgeward.keylime.quotes import BadQuoteRequest, Quoter
from edgeward.keylime.registrar import RegistrarError, auth_tag, parse_blob
from edgeward.keylime.revocation import Trust, check_notice, load_trust
from edgeward.keylime.routes import build_agent_app
from edgeward.keylime.service import uuid_from_ek
from edgeward.keylime.settings import parse_keylime_settings
from edgeward.runtime.registry import Registration

DIGEST = hashlib.sha256(b"module").hexdigest()
UUID = "d432fbb3-d2f1-4a97-9ef7-75bd81c00000"


def _record(seq: int, kind: str, module: str | None, **detail: object) -> AuditRecord:
    return AuditRecord(seq, 0.0, kind, module, detail, "p", f"h{seq}")


# ima-ng ---------------------------------------------------------------------------------------------------------
def test_ima_ng_line_is_the_kernels_layout_with_a_sha1_template_hash() -> None:
    entry = ImaEntry("/edgeward/modules/sensor", DIGEST)
    data = entry.template_data
    assert data == (struct.pack("<I", 40) + b"sha256:\x00" + bytes.fromhex(DIGEST)
                    + struct.pack("<I", 25) + b"/edgeward/modules/sensor\x00")
    pcr, template_hash, template, filehash, path = entry.line().split()
    assert (pcr, template, filehash, path) == ("10", "ima-ng", f"sha256:{DIGEST}", "/edgeward/modules/sensor")
    assert template_hash == hashlib.sha1(data, usedforsecurity=False).hexdigest()
    assert entry.pcr_digest == hashlib.sha256(data).digest()


def test_replay_extends_pcr_10_with_the_sha256_of_each_template() -> None:
    a, b = ImaEntry("/a", DIGEST), ImaEntry("/b", DIGEST)
    one = hashlib.sha256(bytes(32) + a.pcr_digest).digest()
    assert replay([a]) == one and replay([a, b]) == hashlib.sha256(one + b.pcr_digest).digest()


@pytest.mark.parametrize(("path", "digest"), [("/with space", DIGEST), ("", DIGEST), ("/x", "ab" * 20),
                                               ("/x", DIGEST.upper())])
def test_ima_entry_refuses_what_would_break_a_line(path: str, digest: str) -> None:
    with pytest.raises(ValueError):
        ImaEntry(path, digest)


# quotes ---------------------------------------------------------------------------------------------------------
def test_quoted_pcrs_are_exactly_the_mask_plus_16() -> None:
    assert pcrs_of_mask("0x0") == [16]
    assert pcrs_of_mask("0x400") == [10, 16]
    assert pcrs_of_mask("0x1C00") == [10, 11, 12, 16]
    for bad in ("400", "0xzz", "0x1000000", "0x" + "f" * 20):
        with pytest.raises(ValueError):
            pcrs_of_mask(bad)


def test_pcr_blob_is_tpm2_tools_layout() -> None:
    values = [bytes([i]) * 32 for i in range(9)]
    pcrs = [0, 1, 2, 3, 4, 5, 6, 7, 16]
    blob = pcr_blob(pcrs, values)
    assert len(blob) == 4 + 16 * 8 + 4 + 2 * (4 + 8 * 66)
    count, alg, size, select = struct.unpack_from("<IHB3s", blob)
    assert (count, alg, size) == (1, 0x000B, 3) and int.from_bytes(select, "little") == 0x100FF
    (lists,) = struct.unpack_from("<I", blob, 132)
    assert lists == 2
    (first_count, first_size) = struct.unpack_from("<IH", blob, 136)
    assert (first_count, first_size) == (8, 32) and blob[142:174] == values[0]
    with pytest.raises(ValueError):
        pcr_blob([16, 10], values[:2])


# registrar ------------------------------------------------------------------------------------------------------
def test_registrar_blob_is_split_into_credential_and_secret() -> None:
    cred, secret = os.urandom(30), os.urandom(256)
    blob = (struct.pack(">II", 0xBADCC0DE, 1) + struct.pack(">H", len(cred)) + cred
            + struct.pack(">H", len(secret)) + secret)
    challenge = parse_blob(blob)
    assert challenge.credential == struct.pack(">H", 30) + cred
    assert challenge.secret == struct.pack(">H", 256) + secret
    with pytest.raises(RegistrarError):
        parse_blob(blob[:-1])
    with pytest.raises(RegistrarError):
        parse_blob(b"\0" * 40)


def test_auth_tag_is_hmac_sha384_keyed_with_the_base64_secret() -> None:
    secret = b"A" * 32
    assert auth_tag(secret, UUID) == hmac.new(base64.b64encode(secret), UUID.encode(), hashlib.sha384).hexdigest()


def test_agent_uuid_from_the_ek_is_stable_and_per_tpm() -> None:
    assert uuid_from_ek(b"ek-1") == uuid_from_ek(b"ek-1") != uuid_from_ek(b"ek-2")


# measurements and policy ----------------------------------------------------------------------------------------
def test_records_become_entries_and_the_policy_allows_exactly_the_deployed_ones() -> None:
    started = {"code": "c" * 64, "config": ""}
    created = _record(2, "module.created", "sensor", image_id=f"sha256:{DIGEST}")
    finding = _record(3, "integrity.binary_changed", "sensor", detail="changed")
    entries = [e for r in (_record(1, "edgeward.started", None, **started), created, finding,
                           _record(4, "module.started", "sensor"), _record(5, "integrity.cleared", "sensor"))
               for e in entries_of(r)]
    assert [e.path for e in entries] == ["/edgeward/self/code", "/edgeward/self/config",
                                         "/edgeward/modules/sensor", "/edgeward/findings/binary_changed/sensor"]
    reg = Registration(name="sensor", engine="process", engine_id="e", image="/m", image_id=f"sha256:{DIGEST}",
                       generation_id="g", state="running", system=False, config={})
    policy = runtime_policy(started, [reg])
    assert set(policy) == {"meta", "release", "digests", "excludes", "keyrings", "ima", "ima-buf",
                           "verification-keys"}
    allowed = {(e.path, e.sha256) for e in entries if e.sha256 in policy["digests"].get(e.path, [])}
    assert allowed == {(e.path, e.sha256) for e in entries[:3]}  # the finding is never allowed
    assert module_digest("not-a-digest") == hashlib.sha256(b"not-a-digest").hexdigest()


# settings -------------------------------------------------------------------------------------------------------
def test_settings_defaults_are_the_safe_ones(tmp_path: Path) -> None:
    p = Problems("test")
    s = parse_keylime_settings({"registrar_url": "http://r:8890", "verifier_ca": "/ca.crt"}, tmp_path, p)
    p.raise_if_any()
    assert s is not None
    assert (s.revocation_action, s.ak_algorithm, s.listen_port, s.agent_uuid, s.state_dir) == \
        ("record", "rsa", 9002, None, tmp_path / "keylime")


def test_settings_name_each_problem(tmp_path: Path) -> None:
    p = Problems("test")
    s = parse_keylime_settings({"registrar_url": "https://r", "agent_uuid": "nope", "hash_alg": "sha1",
                                "revocation_action": "run", "listen_port": 0, "mtls": False}, tmp_path, p)
    assert s is None
    text = "\n".join(p.items)
    for key in ("registrar_url", "verifier_ca", "agent_uuid", "hash_alg", "revocation_action", "listen_port"):
        assert f"edgeward.keylime.{key}" in text
    assert any("mtls" in w for w in p.warnings)


# the kernel's IMA -----------------------------------------------------------------------------------------------
def test_a_kernel_running_ima_keeps_the_agent_from_starting(tmp_path: Path) -> None:
    check_kernel_ima(tmp_path / "absent")
    (tmp_path / "ascii_runtime_measurements").write_text("")
    check_kernel_ima(tmp_path)
    (tmp_path / "ascii_runtime_measurements").write_text("10 " + "0" * 40 + " ima-ng sha256:00 boot_aggregate\n")
    with pytest.raises(KernelOwnsPcr10, match="PCR 10"):
        check_kernel_ima(tmp_path)


# payloads -------------------------------------------------------------------------------------------------------
def _revocation_pair() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "RevocationNotifier")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return key, cert.public_bytes(serialization.Encoding.PEM)


def test_payload_is_decrypted_and_stored_never_extracted(tmp_path: Path) -> None:
    nk = rsa.generate_private_key(65537, 2048)
    oaep = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)
    k, v = os.urandom(32), os.urandom(32)
    u = bytes(a ^ b for a, b in zip(k, v, strict=True))
    _, cert = _revocation_pair()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("autorun.sh", "#!/bin/sh\ntouch /tmp/pwned\n")
        z.writestr("RevocationNotifier-cert.crt", cert)
    iv = os.urandom(16)
    payload = iv + AESGCM(k).encrypt(iv, archive.getvalue(), None)
    payloads = Payloads(tmp_path, nk, UUID)
    assert payloads.verify("abc") is None
    payloads.ukey({"encrypted_key": base64.b64encode(nk.public_key().encrypt(u, oaep)).decode(),
                   "auth_tag": hmac.new(k, UUID.encode(), hashlib.sha384).hexdigest(),
                   "payload": base64.b64encode(payload).decode()})
    assert payloads.verify("abc") is None  # V not there yet
    payloads.vkey({"encrypted_key": base64.b64encode(nk.public_key().encrypt(v, oaep)).decode()})
    assert payloads.verify("abc") == hmac.new(k, b"abc", hashlib.sha384).hexdigest()
    assert (tmp_path / "payload.zip").read_bytes() == archive.getvalue()
    assert (tmp_path / "revocation-cert.pem").read_bytes() == cert
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # nothing unpacked
        "bootstrap-pin.json", "notice-floor.json", "payload.zip", "revocation-cert.pem"]


def _deliver(tmp_path: Path, archive: bytes) -> Payloads:
    nk = rsa.generate_private_key(65537, 2048)
    oaep = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)
    k, v = os.urandom(32), os.urandom(32)
    u = bytes(a ^ b for a, b in zip(k, v, strict=True))
    iv = os.urandom(16)
    payloads = Payloads(tmp_path, nk, UUID)
    payloads.ukey({"encrypted_key": base64.b64encode(nk.public_key().encrypt(u, oaep)).decode(),
                   "auth_tag": hmac.new(k, UUID.encode(), hashlib.sha384).hexdigest(),
                   "payload": base64.b64encode(iv + AESGCM(k).encrypt(iv, archive, None)).decode()})
    payloads.vkey({"encrypted_key": base64.b64encode(nk.public_key().encrypt(v, oaep)).decode()})
    return payloads


def test_a_payload_whose_certificate_declares_gigabytes_is_never_decompressed(tmp_path: Path) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("RevocationNotifier-cert.crt", b"\0" * (8 * 1024 * 1024))  # 8 MB that deflate to ~8 KB
    assert len(archive.getvalue()) < 64 * 1024
    _deliver(tmp_path, archive.getvalue())
    assert (tmp_path / "payload.zip").exists() and not (tmp_path / "revocation-cert.pem").exists()


def test_a_configured_revocation_certificate_that_is_missing_is_an_error_not_a_fall_back(tmp_path: Path) -> None:
    _, cert = _revocation_pair()
    delivered = tmp_path / "revocation-cert.pem"
    delivered.write_bytes(cert)
    assert load_trust(None, delivered).cert is not None
    with pytest.raises(FileNotFoundError):
        load_trust(tmp_path / "configured-but-missing.pem", delivered)


@pytest.mark.parametrize("nonce", ["abc\n", "a" * 33, "", "abc def", "abc%0A"])
async def test_a_nonce_must_be_1_to_32_letters_and_digits_nothing_after(nonce: str) -> None:
    quoter = Quoter(None, 0x81004B41, "rsa", "", None)  # type: ignore[arg-type] # refused before the TPM is used
    with pytest.raises(BadQuoteRequest):
        await quoter.identity(nonce, "peer")


# revocation -----------------------------------------------------------------------------------------------------
def test_only_a_notice_signed_by_the_revocation_key_is_authentic() -> None:
    key, pem = _revocation_pair()
    cert = Trust(x509.load_pem_x509_certificate(pem), True, "revocation_cert")
    msg = json.dumps({"type": "revocation", "agent_id": UUID, "event_id": "ima.validation.ima-ng.not_in_allowlist",
                      "context": json.dumps({"message": "File not found"})})
    sig = base64.b64encode(key.sign(msg.encode(), padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                              salt_length=padding.PSS.MAX_LENGTH),
                                    hashes.SHA256())).decode()
    good = check_notice({"msg": msg, "signature": sig}, cert)
    assert good.authenticated and good.fields["agent_id"] == UUID
    assert not check_notice({"msg": msg.replace("revocation", "revocatioN"), "signature": sig}, cert).authenticated
    assert not check_notice({"msg": msg, "signature": ""}, cert).authenticated
    assert not check_notice({"msg": msg, "signature": sig}, Trust(None, False, "none")).authenticated
    assert not check_notice({"msg": msg, "signature": "!!"}, cert).authenticated
    with pytest.raises(ValueError):
        check_notice({"signature": sig}, cert)


# routes ---------------------------------------------------------------------------------------------------------
async def test_routes_refuse_a_caller_without_a_client_certificate() -> None:
    client = TestClient(TestServer(build_agent_app(object())))  # type: ignore[arg-type]  # no handler is reached
    await client.start_server()
    try:
        version = await client.get("/version")
        assert (await version.json())["results"]["supported_versions"][-1] == "2.6"
        refused = await client.get("/v2.6/quotes/identity?nonce=abc")  # plain HTTP: no peer certificate
        assert refused.status == 403 and (await refused.json())["code"] == 403
    finally:
        await client.close()


def test_an_ek_certificate_ending_in_a_zero_byte_is_read_whole() -> None:
    from edgeward.keylime.tpm_ops import der_prefix

    cert = b"\x30\x82\x01\x00" + bytes(255) + b"\x00"  # 256 content bytes, the last one zero
    assert der_prefix(cert + bytes(700)) == cert  # the NV index's padding goes, the certificate's zero stays
    short = b"\x30\x03\x02\x01\x00"
    assert der_prefix(short + b"\xff" * 10) == short
    assert der_prefix(b"\x00" * 16) is None and der_prefix(b"\x30\x82\x01\x00\x00") is None


def test_every_field_of_a_notice_is_bounded() -> None:
    notice = check_notice({"msg": json.dumps({"type": "revocation", "agent_id": "x" * 10_000_000,
                                              "event_id": "e" * 5000, "context": "c" * 100_000})},
                          Trust(None, False, "none"))
    assert not notice.authenticated
    assert len(json.dumps(notice.audit_detail())) < 5000


def test_an_attestation_key_must_have_been_made_in_this_tpm_and_bound_to_it() -> None:
    from tpm2_pytss import TPMA_OBJECT

    from edgeward.keylime.tpm_ops import ak_attributes_acceptable

    made_here = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
                 | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH)
    assert ak_attributes_acceptable(int(made_here))
    for missing in (TPMA_OBJECT.FIXEDTPM, TPMA_OBJECT.FIXEDPARENT, TPMA_OBJECT.SENSITIVEDATAORIGIN,
                    TPMA_OBJECT.RESTRICTED, TPMA_OBJECT.SIGN_ENCRYPT):  # duplicable, imported, or not an AK
        assert not ak_attributes_acceptable(int(made_here & ~missing)), missing
    assert not ak_attributes_acceptable(int(made_here | TPMA_OBJECT.DECRYPT))


async def test_a_signed_notice_posted_again_is_recorded_as_a_replay_and_not_acted_on(tmp_path: Path) -> None:
    from edgeward.attest.audit import AuditLog
    from edgeward.attest.audit_key import AuditKey
    from edgeward.keylime.service import KeylimeAgent

    key, pem = _revocation_pair()
    (tmp_path / "revocation.pem").write_bytes(pem)
    problems = Problems()
    settings = parse_keylime_settings({"registrar_url": "http://127.0.0.1:1", "verifier_ca": str(tmp_path / "ca"),
                                       "revocation_cert": str(tmp_path / "revocation.pem"),
                                       "revocation_action": "stop_modules"}, tmp_path, problems)
    assert settings is not None, problems.items
    acted: list[int] = []

    async def stop_modules() -> None:
        acted.append(1)

    audit = AuditLog(tmp_path / "audit", AuditKey(bytes(32)))
    agent = KeylimeAgent(settings, None, audit, on_revoked=stop_modules)  # type: ignore[arg-type] # no TPM needed
    agent.uuid = UUID
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)

    def signed(event_time: str) -> dict[str, str]:
        msg = json.dumps({"type": "revocation", "agent_id": UUID, "event_id": "ima.validation.ima-ng.not_in_allowlist",
                          "event_time": event_time})
        return {"msg": msg, "signature": base64.b64encode(key.sign(msg.encode(), pss, hashes.SHA256())).decode()}

    first = signed("Wed Dec  2 23:00:00 2026")
    await agent.revocation(first)
    await agent.revocation(first)  # the same signed notice, posted again
    await agent.revocation(signed("Wed Dec  2 23:05:00 2026"))  # same kind of failure, a new event: acted on
    kinds = [r.kind for r in audit.records(since=0) if r.kind.startswith("keylime.")]
    assert kinds == ["keylime.revocation", "keylime.revoked", "keylime.revocation_acted",
                     "keylime.revocation_replayed", "keylime.revocation", "keylime.revoked",
                     "keylime.revocation_acted"]
    assert len(acted) == 2


async def test_a_failing_route_logs_one_traceback_a_minute_not_one_per_request(
        caplog: pytest.LogCaptureFixture) -> None:
    """Any holder of a client certificate the verifier's CA signed reaches the routes: an internal error it can
    repeat must not write a traceback per request (the log is the device's disk, and the operator's view)."""

    class Broken:
        @property
        def quoter(self) -> Any:
            raise RuntimeError("the quoter is gone")

    app = build_agent_app(Broken())  # type: ignore[arg-type]
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: {"subject": ()} if name == "peercert" else default
    caplog.set_level(logging.ERROR)
    for _ in range(50):
        request = make_mocked_request("GET", "/v2.2/agent/info", app=app, transport=transport)
        match = await app.router.resolve(request)
        request._match_info = match  # what the server's dispatch does
        match.add_app(app)
        response = await match.handler(request)
        assert response.status == 500
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, [r.getMessage() for r in caplog.records]
