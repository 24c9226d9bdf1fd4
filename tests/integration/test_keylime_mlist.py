"""The Keylime agent's measurement list on a real TPM (swtpm): built at the first start of a boot, rebuilt from the
audit log after a restart, completed after a crash between journal and extend, refused when PCR 10 was extended
by someone else, and started over after a TPM reset. Also: the persisted attestation key stays the same."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgeward.attest.audit import AuditLog
from edgeward.attest.audit_key import AuditKey
from edgeward.keylime.ima import IMA_PCR, replay
from edgeward.keylime.mlist import RESERVE_BYTES, MeasurementList, MeasurementListBroken
from edgeward.keylime.tpm_ops import AkMismatch, ensure_ak, extend_measurement, read_pcr
from edgeward.tpm.service import TpmService
from edgeward.tpm.settings import parse_tpmd_settings
from tests.fixtures.swtpm import Swtpm

pytestmark = pytest.mark.asyncio(loop_scope="session")
KEY = AuditKey(bytes(range(32)))
CODE = hashlib.sha256(b"code").hexdigest()


@pytest.fixture
async def tpm(fresh_swtpm: Swtpm, tmp_path: Path) -> AsyncIterator[TpmService]:
    service = TpmService(parse_tpmd_settings({"tcti": fresh_swtpm.tcti}, tmp_path / "run"))
    try:
        yield service
    finally:
        service.close()


def _audit(tmp_path: Path) -> AuditLog:
    audit = AuditLog(tmp_path / "audit", KEY)
    audit.append("edgeward.started", None, {"code": CODE, "config": ""})
    audit.append("module.created", "a", {"image_id": "sha256:" + "a" * 64})
    audit.append("module.created", "b", {"image_id": "sha256:" + "b" * 64})
    audit.append("module.removed", "b", {})
    return audit


async def _pcr10(tpm: TpmService) -> bytes:
    return await tpm.run_exclusive(lambda e: read_pcr(e, IMA_PCR))


async def _started(audit: AuditLog, tmp_path: Path, tpm: TpmService) -> MeasurementList:
    mlist = MeasurementList(audit, tmp_path / "measurements.json", tpm)
    await mlist.start()
    return mlist


def _paths(mlist: MeasurementList) -> list[str]:
    return [line.split()[4] for line in mlist.lines_from(0)[0].splitlines()]


async def test_first_start_lists_edgeward_then_existing_modules_and_replays_to_pcr_10(
        tpm: TpmService, tmp_path: Path) -> None:
    audit = _audit(tmp_path)
    mlist = await _started(audit, tmp_path, tpm)
    assert _paths(mlist) == ["/edgeward/self/code", "/edgeward/self/config", "/edgeward/modules/a"]  # b was removed
    assert await _pcr10(tpm) == replay(mlist._entries)
    audit.append("integrity.binary_changed", "a", {"detail": "changed"})
    audit.append("module.started", "a", {})
    await mlist.sync()
    assert _paths(mlist)[-1] == "/edgeward/findings/binary_changed/a"
    assert await _pcr10(tpm) == replay(mlist._entries)
    text, start = mlist.lines_from(3)
    assert start == 3 and text.count("\n") == 1
    assert mlist.lines_from(99) == mlist.lines_from(0)  # beyond the end: the verifier starts over


async def test_restart_rebuilds_the_list_from_the_audit_log_without_extending_again(
        tpm: TpmService, tmp_path: Path) -> None:
    audit = _audit(tmp_path)
    first = await _started(audit, tmp_path, tpm)
    pcr = await _pcr10(tpm)
    again = await _started(audit, tmp_path, tpm)
    assert again.lines_from(0) == first.lines_from(0) and await _pcr10(tpm) == pcr
    audit.append("edgeward.started", None, {"code": CODE, "config": ""})  # the restart's own start record
    await again.sync()
    assert _paths(again)[-2:] == ["/edgeward/self/code", "/edgeward/self/config"]
    assert await _pcr10(tpm) == replay(again._entries)


async def test_a_crash_between_journal_and_extend_is_completed_at_the_next_start(
        tpm: TpmService, tmp_path: Path) -> None:
    audit = _audit(tmp_path)
    await _started(audit, tmp_path, tpm)
    record = audit.append("module.created", "c", {"image_id": "sha256:" + "c" * 64})
    journal = tmp_path / "measurements.json"
    doc = json.loads(journal.read_text())
    doc["seqs"].append(record.seq)
    doc["cursor"] = record.seq
    journal.write_text(json.dumps(doc))  # journalled, never extended
    mlist = await _started(audit, tmp_path, tpm)
    assert _paths(mlist)[-1] == "/edgeward/modules/c" and await _pcr10(tpm) == replay(mlist._entries)


async def test_pcr_10_extended_by_someone_else_is_refused(tpm: TpmService, tmp_path: Path) -> None:
    audit = _audit(tmp_path)
    await _started(audit, tmp_path, tpm)
    pcr = await _pcr10(tpm)
    await tpm.run_exclusive(functools.partial(extend_measurement, before=pcr, digest=b"\x01" * 32))
    with pytest.raises(MeasurementListBroken, match="no prefix"):
        await _started(audit, tmp_path, tpm)


async def test_a_tpm_reset_starts_a_new_list(fresh_swtpm: Swtpm, tmp_path: Path) -> None:
    audit = _audit(tmp_path)
    settings = parse_tpmd_settings({"tcti": fresh_swtpm.tcti}, tmp_path / "run")
    tpm = TpmService(settings)
    try:
        first = await _started(audit, tmp_path, tpm)
        audit.append("integrity.binary_changed", "a", {"detail": "changed"})
        await first.sync()
        assert len(first) == 4
    finally:
        tpm.close()
    fresh_swtpm.restart()  # a reboot: TPM Reset, PCR 10 back to zero, resetCount up
    tpm = TpmService(settings)
    try:
        rebooted = await _started(audit, tmp_path, tpm)
        assert _paths(rebooted) == ["/edgeward/self/code", "/edgeward/self/config", "/edgeward/modules/a"]
        assert await _pcr10(tpm) == replay(rebooted._entries)
    finally:
        tpm.close()


async def test_the_attestation_key_is_persisted_and_checked(tpm: TpmService) -> None:
    handle = 0x81004B41
    first = await tpm.run_exclusive(functools.partial(ensure_ak, handle=handle, algorithm="rsa"))
    again = await tpm.run_exclusive(functools.partial(ensure_ak, handle=handle, algorithm="rsa"))
    assert first.public == again.public
    with pytest.raises(AkMismatch, match="not a restricted ECC signing key"):
        await tpm.run_exclusive(functools.partial(ensure_ak, handle=handle, algorithm="ecc"))


async def test_a_journal_write_that_fails_does_not_hold_the_finding_back(
        tpm: TpmService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A4: the finding is extended and served from memory while the journal cannot be written, and the journal is
    written at the first sync that can: a restart then rebuilds the list to PCR 10's value."""
    from edgeward import fsreserve

    audit = _audit(tmp_path)
    mlist = await _started(audit, tmp_path, tpm)
    (tmp_path / "measurements.reserve").unlink()  # no reserve to fall back on: the write fails
    journal = (tmp_path / "measurements.json").read_bytes()
    audit.append("integrity.image_swapped", "a", {"detail": "swapped"})

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsreserve, "atomic_write", full_disk)
    monkeypatch.setattr(fsreserve.os, "posix_fallocate", full_disk)
    await mlist.sync()
    assert _paths(mlist)[-1] == "/edgeward/findings/image_swapped/a"
    assert await _pcr10(tpm) == replay(mlist._entries)  # in the PCR, though not in the journal
    assert (tmp_path / "measurements.json").read_bytes() == journal
    with pytest.raises(MeasurementListBroken, match="full disk"):  # a restart now: the device fails, never passes
        await _started(audit, tmp_path, tpm)
    monkeypatch.undo()
    mlist.flush()  # room again (Edgeward stopping, say): written
    again = await _started(audit, tmp_path, tpm)
    assert again.lines_from(0) == mlist.lines_from(0)
    assert (tmp_path / "measurements.reserve").stat().st_size == RESERVE_BYTES  # and the reserve made again


async def test_a_finding_the_audit_log_cannot_take_reaches_pcr_10_and_the_list(
        tpm: TpmService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audit = _audit(tmp_path)
    mlist = await _started(audit, tmp_path, tpm)

    def full(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(audit, "_append", full)
    for _ in range(3):  # the integrity monitor tries again at each pass: one entry for the finding
        with pytest.raises(sqlite3.OperationalError):
            audit.append("integrity.binary_changed", "a", {"detail": "changed", "policy": "refuse"})
    with pytest.raises(sqlite3.OperationalError):
        audit.append("module.started", "a", {})  # no finding: no entry
    await mlist.sync()
    assert _paths(mlist)[3:] == ["/edgeward/findings/binary_changed/a"]
    assert await _pcr10(tpm) == replay(mlist._entries)
    monkeypatch.undo()
    audit.append("integrity.binary_changed", "a", {"detail": "changed", "policy": "refuse"})  # room again
    await mlist.sync()
    assert _paths(mlist)[3:] == ["/edgeward/findings/binary_changed/a"] * 2  # the PCR keeps the first, too
    again = await _started(audit, tmp_path, tpm)  # the unrecorded one is in the journal, inline
    assert again.lines_from(0) == mlist.lines_from(0) and await _pcr10(tpm) == replay(again._entries)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root only)")
async def test_on_a_full_file_system_the_reserve_file_makes_room_for_the_journal(
        tpm: TpmService, tmp_path: Path) -> None:
    home = tmp_path / "keylime"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(home)], check=True)
    try:
        audit = _audit(tmp_path)
        mlist = MeasurementList(audit, home / "measurements.json", tpm)
        await mlist.start()
        assert (home / "measurements.reserve").stat().st_size == RESERVE_BYTES
        with (home / "filler").open("wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(bytes(4096))
        audit.append("integrity.image_swapped", "a", {"detail": "swapped"})
        await mlist.sync()
        assert not mlist._unsaved  # written, in the reserve's room (and the reserve made again in what was left)
        again = MeasurementList(audit, home / "measurements.json", tpm)
        await again.start()
        assert _paths(again)[-1] == "/edgeward/findings/image_swapped/a"
    finally:
        subprocess.run(["umount", str(home)], check=False)


async def test_a_refused_registration_turns_off_the_agent_not_the_daemon(tpm: TpmService, tmp_path: Path) -> None:
    """The registrar speaks plain HTTP and a UUID derived from the EK can be squatted: a 403 must not keep every
    other service of the device from starting; it is recorded, and the agent is not registered."""
    import datetime as dt

    from aiohttp import web
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from edgeward.config.problems import Problems
    from edgeward.keylime.service import KeylimeAgent
    from edgeward.keylime.settings import parse_keylime_settings
    from tests.fixtures.keylime import free_port

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test verifier CA")])
    now = dt.datetime.now(dt.UTC)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"code": 403, "status": "agent exists with another EK", "results": {}}, status=403)

    app = web.Application()
    app.router.add_post("/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    registrar_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", registrar_port).start()
    problems = Problems()
    settings = parse_keylime_settings({"registrar_url": f"http://127.0.0.1:{registrar_port}",
                                       "verifier_ca": str(tmp_path / "ca.pem"), "listen_port": free_port(),
                                       "ima_securityfs": str(tmp_path / "no-ima")}, tmp_path, problems)
    assert settings is not None, problems.items
    audit = _audit(tmp_path)
    agent = KeylimeAgent(settings, tpm, audit)
    try:
        await agent.start()  # does not raise
        refused = [r for r in audit.records(since=0) if r.kind == "keylime.registration_refused"]
        assert len(refused) == 1 and "403" in refused[0].detail["why"]
        assert not (settings.state_dir / "registration.json").exists()
    finally:
        await agent.stop()
        await runner.cleanup()
