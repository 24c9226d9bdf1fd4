"""Issue 12, item 8: the audit log against someone who can write its files.

The attacker works as root directly on the files, offline (the log closed, as when the daemon is stopped): drops
the SQLite triggers, edits or deletes records, recomputes the hash chain with the log's own ``record_hash`` and
rewrites the head file. The audit key lives on a SoftHSM2 token behind the real keys service (`edgeward serve keys`), so the
attacker never holds it; the TPM counter is a real NV counter in swtpm behind the real TPM service (`edgeward serve
tpm`). ``edgeward audit verify``
judges, reaching both services over their sockets.

What each setup catches (asserted below): with the key alone, edits, deletions, cut tails and a full wipe; a
rollback to an older copy of the files only with the TPM counter.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("tpm2_pytss")

from edgeward.attest.audit import AuditCounterUnavailable, AuditLog, record_hash
from edgeward.attest.audit_counter import AuditCounter, SocketCounter
from edgeward.attest.audit_open import open_audit_log
from edgeward.http.errors import HttpError
from edgeward.keys.client import KeysClient
from edgeward.supervise import start_daemon, stop_daemon
from tests.fixtures.peers import as_uid_async
from tests.fixtures.softhsm import make_token
from tests.fixtures.swtpm import Swtpm

pytestmark = pytest.mark.asyncio(loop_scope="session")

EDGEWARD = [sys.executable, "-m", "edgeward"]
NOBODY = 65534


@dataclass
class Device:
    base: Path
    keys: KeysClient
    tpm_socket: Path | None

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def run(self) -> Path:
        return self.base / "run"

    @property
    def home(self) -> Path:
        return self.state / "audit"

    def counter(self) -> AuditCounter | None:
        return SocketCounter(self.tpm_socket) if self.tpm_socket is not None else None

    async def start(self) -> AuditLog:
        """What the daemon does at start (runtime.compose): open, check, complete, anchor."""
        return await open_audit_log(self.home, self.keys, self.counter())

    async def write(self, *kinds: str) -> None:
        log = await self.start()
        try:
            for kind in kinds:
                await asyncio.to_thread(log.append, kind, "m", {"finding": kind})
        finally:
            log.close()

    async def verify(self) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(subprocess.run, [
            *EDGEWARD, "audit", "verify", "--state-dir", str(self.state), "--run-dir", str(self.run)],
            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"})


@asynccontextmanager
async def device(request: pytest.FixtureRequest, base: Path, tpm: Swtpm | None) -> AsyncIterator[Device]:
    """`edgeward serve keys` on a SoftHSM2 token of its own and (with ``tpm``) `edgeward serve tpm`, each a process
    on its real socket, as the split deployment runs them."""
    hsm = make_token(base / "hsm")
    config = base / "config.toml"
    config.write_text(f'[aziot_keys]\npkcs11_lib_path = "{hsm.lib}"\npkcs11_base_slot = "{hsm.uri()}"\n'
                      + (f'[tpm]\ntcti = "{tpm.tcti}"\n' if tpm is not None else ""))
    common = ["-c", str(config), "--state-dir", str(base / "state"), "--run-dir", str(base / "run")]
    env = {**os.environ, "SOFTHSM2_CONF": str(hsm.conf), "TSS2_LOG": "all+NONE"}
    procs = []
    keys = KeysClient(base / "run" / "keyd.sock")
    try:
        for service in ("keys", "tpm") if tpm is not None else ("keys",):
            procs.append(await asyncio.to_thread(start_daemon, ["serve", service, *common], env))
        yield Device(base, keys, base / "run" / "tpmd.sock" if tpm is not None else None)
    finally:
        await keys.close()
        for proc in reversed(procs):
            await asyncio.to_thread(stop_daemon, proc)


# what the attacker does, as root, on the files -------------------------------------------------------------------
def _db(home: Path) -> sqlite3.Connection:
    db = sqlite3.connect(home / "audit.db", isolation_level=None)
    db.execute("DROP TRIGGER IF EXISTS audit_no_update")
    db.execute("DROP TRIGGER IF EXISTS audit_no_delete")
    return db


def _rechain_and_rewrite_head(home: Path, *, old_format: bool = False) -> None:
    """Recompute every record's hash with the code's own record_hash, then a head naming the new last record: in
    the head file's own format (the attacker cannot make its MAC, so keeps the one there) or the old one."""
    db = _db(home)
    prev, last = "0" * 64, 0
    for seq, ts, kind, module, detail in db.execute("SELECT seq, ts, kind, module, detail FROM audit ORDER BY seq"):
        digest = record_hash(prev, seq, ts=ts, kind=kind, module=module, detail=json.loads(detail))
        db.execute("UPDATE audit SET prev_hash=?, hash=? WHERE seq=?", (prev, digest, seq))
        prev, last = digest, seq
    db.close()
    head_file = home / "audit.head"
    if old_format:
        head_file.write_text(f"{last} {prev}\n")
        return
    head = json.loads(head_file.read_text())
    head_file.write_text(json.dumps({**head, "seq": last, "hash": prev}))


def edit(home: Path) -> None:
    db = _db(home)
    db.execute("""UPDATE audit SET detail='{"finding": "nothing to see"}' WHERE seq=3""")
    db.close()
    _rechain_and_rewrite_head(home)


def edit_as_if_never_authenticated(home: Path) -> None:
    """The same edit, with every MAC removed and the head in the format of a log from before the key existed."""
    db = _db(home)
    db.execute("""UPDATE audit SET detail='{"finding": "nothing to see"}', mac=NULL, counter=NULL WHERE seq=3""")
    db.execute("UPDATE audit SET mac=NULL, counter=NULL")
    db.close()
    _rechain_and_rewrite_head(home, old_format=True)


def delete(home: Path) -> None:
    db = _db(home)
    db.execute("DELETE FROM audit WHERE seq=2")
    db.execute("UPDATE audit SET seq=seq-1 WHERE seq>2")
    db.close()
    _rechain_and_rewrite_head(home)


def cut_tail(home: Path) -> None:
    db = _db(home)
    db.execute("DELETE FROM audit WHERE seq>3")
    db.close()
    _rechain_and_rewrite_head(home)


def wipe(home: Path) -> None:
    shutil.rmtree(home)


ATTACKS = {
    "edit": (edit, "record 3 was rewritten"),
    "edit_as_if_never_authenticated": (edit_as_if_never_authenticated, "the authenticated head is gone"),
    "delete": (delete, "record 2 was rewritten"),
    "cut_tail": (cut_tail, "the head file was forged or altered"),
    "wipe": (wipe, "it was wiped"),
    "wipe_then_restart": (wipe, "the log was wiped"),
}


def _tampered(done: subprocess.CompletedProcess[str], problem: str) -> bool:
    return done.returncode == 1 and "TAMPERED" in done.stderr and problem in " ".join(done.stderr.split())


# the attacks --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_tpm", [True, False], ids=["tpm-counter", "key-only"])
@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_rewriting_the_audit_files_is_detected(request: pytest.FixtureRequest, public_dir: Path,
                                                     attack: str, with_tpm: bool) -> None:
    tpm = request.getfixturevalue("fresh_swtpm") if with_tpm else None
    async with device(request, public_dir, tpm) as dev:
        await dev.write(*(f"integrity.finding.{i}" for i in range(1, 6)))
        assert (await dev.verify()).returncode == 0
        tamper, problem = ATTACKS[attack]
        tamper(dev.home)
        if attack == "wipe_then_restart":  # the daemon starts again on the wiped state and writes its start record
            await dev.write("edgeward.started")
        done = await dev.verify()
        assert _tampered(done, problem), done.stdout + done.stderr


async def test_a_rollback_to_an_older_copy_is_detected_with_the_tpm_counter(
        request: pytest.FixtureRequest, public_dir: Path, fresh_swtpm: Swtpm) -> None:
    async with device(request, public_dir, fresh_swtpm) as dev:
        await dev.write("one", "two", "three")
        shutil.copytree(dev.home, public_dir / "copy")
        await dev.write("integrity.image_swapped", "integrity.stopped")
        shutil.rmtree(dev.home)
        shutil.copytree(public_dir / "copy", dev.home)
        done = await dev.verify()
        assert _tampered(done, "behind the TPM counter"), done.stdout + done.stderr
        # The daemon, starting on the restored copy, does not launder it under a fresh head.
        log = await dev.start()
        try:
            assert log.problem is not None and "behind the TPM counter" in log.problem
            await asyncio.to_thread(log.append, "edgeward.started")
        finally:
            log.close()
        assert _tampered(await dev.verify(), "behind the TPM counter")


async def test_without_a_tpm_a_rollback_to_an_older_copy_goes_unnoticed(request: pytest.FixtureRequest,
                                                                         public_dir: Path) -> None:
    """The limit of the key alone, stated as a test so that the README cannot claim more: an older copy of the
    files carries authentic MACs, and nothing outside the files says it is old."""
    async with device(request, public_dir, None) as dev:
        await dev.write("one", "two", "three")
        shutil.copytree(dev.home, public_dir / "copy")
        await dev.write("integrity.image_swapped", "integrity.stopped")
        shutil.rmtree(dev.home)
        shutil.copytree(public_dir / "copy", dev.home)
        done = await dev.verify()
        assert done.returncode == 0 and "3 records" in done.stdout, done.stdout + done.stderr


# crashes ------------------------------------------------------------------------------------------------------------
CRASHING_APPEND = """
import asyncio, os, signal, sys
from pathlib import Path
import edgeward.attest.audit as audit
from edgeward.attest.audit_counter import SocketCounter
from edgeward.attest.audit_open import open_audit_log
from edgeward.http.errors import HttpError
from edgeward.keys.client import KeysClient

keyd, tpmd, home, where = sys.argv[1:5]

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

async def main():
    keys, counter = KeysClient(keyd), SocketCounter(tpmd)
    if where == "first-anchoring":
        counter.increment = die  # the head says "first"; the counter never moves
    log = await open_audit_log(Path(home), keys, counter)
    await keys.close()
    if where == "before-head":
        audit.atomic_write = die  # the record is committed; the head is never written
    else:
        counter.increment = die  # record and head are written; the TPM counter never moves
    log.append("crash.window")

asyncio.run(main())
"""


@pytest.mark.parametrize("where", ["before-head", "before-increment"])
async def test_kill_9_between_commit_and_head_update_is_no_false_alarm(
        request: pytest.FixtureRequest, public_dir: Path, fresh_swtpm: Swtpm, where: str) -> None:
    async with device(request, public_dir, fresh_swtpm) as dev:
        await dev.write("one", "two")
        assert dev.tpm_socket is not None
        child = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-c", CRASHING_APPEND, str(dev.run / "keyd.sock"), str(dev.tpm_socket), str(dev.home),
            where], capture_output=True, text=True, timeout=60)
        assert child.returncode == -9, child.stderr
        crashed = await dev.verify()
        assert crashed.returncode == 0 and "intact" in crashed.stdout and "note:" in crashed.stdout, \
            crashed.stdout + crashed.stderr
        await dev.write("edgeward.started")  # the next start completes what the crash left
        done = await dev.verify()
        assert done.returncode == 0 and "4 records" in done.stdout and "note:" not in done.stdout, done.stdout
        counter = dev.counter()
        assert counter is not None
        head = json.loads((dev.home / "audit.head").read_text())
        assert head["counter"] == await asyncio.to_thread(counter.read)


async def test_an_unreachable_tpm_at_start_stops_the_start_and_leaves_no_false_alarm(
        request: pytest.FixtureRequest, public_dir: Path, fresh_swtpm: Swtpm) -> None:
    async with device(request, public_dir, fresh_swtpm) as dev:
        await dev.write("one")
        with pytest.raises(AuditCounterUnavailable):
            await open_audit_log(dev.home, dev.keys, SocketCounter(public_dir / "no-tpmd.sock"))
        await dev.write("two")
        done = await dev.verify()
        assert done.returncode == 0 and "2 records" in done.stdout, done.stdout + done.stderr


async def test_kill_9_during_the_first_anchoring_to_the_counter_is_no_false_alarm_and_no_way_back(
        request: pytest.FixtureRequest, public_dir: Path, fresh_swtpm: Swtpm) -> None:
    """The first anchoring writes a head saying "first", then moves the counter, then names its value. Killed in
    between, the log verifies; once the anchoring finished, a copy from that moment no longer does."""
    async with device(request, public_dir, fresh_swtpm) as dev:
        assert dev.tpm_socket is not None
        child = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-c", CRASHING_APPEND, str(dev.run / "keyd.sock"), str(dev.tpm_socket), str(dev.home),
            "first-anchoring"], capture_output=True, text=True, timeout=60)
        assert child.returncode == -9, child.stderr
        assert json.loads((dev.home / "audit.head").read_text())["counter"] == "first"
        crashed = await dev.verify()
        assert crashed.returncode == 0 and "interrupted" in crashed.stdout, crashed.stdout + crashed.stderr
        shutil.copytree(dev.home, public_dir / "copy")
        await dev.write("edgeward.started", "integrity.image_swapped")
        assert (await dev.verify()).returncode == 0
        shutil.rmtree(dev.home)
        shutil.copytree(public_dir / "copy", dev.home)
        done = await dev.verify()
        assert _tampered(done, "first anchoring to the TPM counter"), done.stdout + done.stderr


# who may move the counter -------------------------------------------------------------------------------------------
async def test_a_local_user_cannot_move_the_audit_counter(request: pytest.FixtureRequest, public_dir: Path,
                                                          fresh_swtpm: Swtpm) -> None:
    """Moving the counter would make an intact log read as rolled back; only root and tpmd's user may."""
    async with device(request, public_dir, fresh_swtpm) as dev:
        await dev.write("one")
        assert dev.tpm_socket is not None
        # tpmd's socket is 0660: a local user in its group gets past the mode, and the access table refuses it
        group = (dev.tpm_socket.stat().st_gid,)
        status, body = await as_uid_async(NOBODY, dev.tpm_socket, "POST",
                                          "/edgeward/audit-counter/increment?api-version=2026-11-01", groups=group)
        assert status == 401 and "row 'tpmd (every route)'" in body["message"], body
        status, body = await as_uid_async(NOBODY, dev.tpm_socket, "GET", "/edgeward/audit-counter?api-version=2026-11-01",
                                          groups=group)
        assert status == 401, body
        assert (await dev.verify()).returncode == 0


# the real daemon ----------------------------------------------------------------------------------------------------
async def test_the_daemon_anchors_its_log_and_a_restored_copy_shows(public_dir: Path, fresh_swtpm: Swtpm) -> None:
    """`edgeward run` with a TPM: each start appends a record that moves the counter; a copy of the state from an
    earlier stop, put back, is caught by `edgeward audit verify` while the daemon runs on it."""
    config = public_dir / "config.toml"
    config.write_text(f'[tpm]\ntcti = "{fresh_swtpm.tcti}"\n')
    state, run = public_dir / "state", public_dir / "run"
    args = ["run", "-c", str(config), "--state-dir", str(state), "--run-dir", str(run)]
    env = {**os.environ, "TSS2_LOG": "all+NONE", "COLUMNS": "300"}
    verify = [*EDGEWARD, "audit", "verify", "-c", str(config), "--state-dir", str(state), "--run-dir", str(run)]

    async def run_once(check: bool) -> subprocess.CompletedProcess[str] | None:
        proc = await asyncio.to_thread(start_daemon, args, env)
        try:
            if check:
                return await asyncio.to_thread(subprocess.run, verify, capture_output=True, text=True, timeout=60,
                                               env=env)
            return None
        finally:
            await asyncio.to_thread(stop_daemon, proc)

    first = await run_once(check=True)
    assert first is not None and first.returncode == 0 and "TPM counter" in first.stdout, first.stdout + first.stderr
    shutil.copytree(state / "audit", public_dir / "audit-copy")
    await run_once(check=False)
    shutil.rmtree(state / "audit")
    shutil.copytree(public_dir / "audit-copy", state / "audit")
    restored = await run_once(check=True)
    assert restored is not None and _tampered(restored, "behind the TPM counter"), restored.stdout + restored.stderr


async def test_wiping_the_log_and_its_key_store_marks_still_shows_with_the_tpm_counter(
        request: pytest.FixtureRequest, public_dir: Path, fresh_swtpm: Swtpm) -> None:
    """An attacker who deletes the log and the key store's audit keys too: the TPM counter still says how many
    records there were, so verify reports a wipe, not a device that never had a log."""
    async with device(request, public_dir, fresh_swtpm) as dev:
        await dev.write("one", "two")
        for key_id in ("edgeward-audit", "edgeward-audit-anchored", "edgeward-audit-counted"):
            try:
                handle = await dev.keys.load_key(key_id)
            except HttpError:
                continue
            await dev.keys.delete_key(handle)
        shutil.rmtree(dev.home)
        done = await dev.verify()
        assert _tampered(done, "it was wiped"), done.stdout + done.stderr
        assert "TPM counter says" in " ".join(done.stderr.split())
