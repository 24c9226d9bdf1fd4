"""Opening the audit log with its key and counter: by the daemon (which appends) and by the CLI (which verifies).

The CLI runs as root. It reaches the keys service and the TPM service over their sockets when they are running
(all-in-one or split, the sockets are the same), and otherwise opens them in this process from the configuration,
as the daemon would: the key never leaves the key store in either case.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..keys.api import KeysApi
from .audit import AuditLog
from .audit_chain import GENESIS, Verification
from .audit_counter import AuditCounter, InProcessCounter, SocketCounter
from .audit_key import ANCHORED_MARKER, COUNTED_MARKER, has_marker, load_audit_key, set_marker

if TYPE_CHECKING:
    from ..daemon import DaemonSettings

__all__ = ["open_audit_log", "verify_installed_log"]

log = logging.getLogger(__name__)


async def open_audit_log(home: Path, keys: KeysApi, counter: AuditCounter | None = None) -> AuditLog:
    """The daemon's audit log: keyed, checked, finished where a crash left it, anchored, and marked so in the key
    store. A log that does not check out is opened all the same (see :class:`AuditLog`), with ``problem`` set."""
    key = await load_audit_key(keys, create=True)
    assert key is not None
    anchored = await has_marker(keys, ANCHORED_MARKER)
    counted = await has_marker(keys, COUNTED_MARKER)
    audit = AuditLog(home, key, counter, anchored=anchored, counted=counted)
    try:
        # In a thread: the counter may be a socket to a TPM service that this very event loop serves.
        await asyncio.to_thread(audit.start)
        now_anchored, now_counted = audit.marks
        if now_anchored and not anchored:
            await set_marker(keys, ANCHORED_MARKER)
        if now_counted and not counted:
            await set_marker(keys, COUNTED_MARKER)
    except BaseException:
        audit.close()
        raise
    return audit


@contextlib.asynccontextmanager
async def _keys_for(settings: DaemonSettings) -> AsyncIterator[KeysApi]:
    from ..http.peercred import Caller  # noqa: PLC0415
    from ..keys.client import KeysClient  # noqa: PLC0415

    client = KeysClient(settings.keys.socket_path)
    try:
        await has_marker(client, ANCHORED_MARKER)  # is anyone there?
    except OSError:
        await client.close()
    else:
        try:
            yield client
        finally:
            await client.close()
        return
    from ..keys.compose import build_key_service  # noqa: PLC0415

    if not settings.keys.homedir.is_dir():  # opening it would create a key store (and a master key) from nothing
        raise FileNotFoundError(f"no keys service at {settings.keys.socket_path} and no key store at "
                                f"{settings.keys.homedir}")
    log.info("the keys service is not reachable at %s: opening the key store in this process",
             settings.keys.socket_path)
    service = build_key_service(settings.keys)
    try:
        yield service.for_caller(Caller.this_process())
    finally:
        service.close()
        service.executor.shutdown()


@contextlib.contextmanager
def _counter_for(settings: DaemonSettings) -> Iterator[AuditCounter | None]:
    socket = settings.tpm.socket_path if settings.tpm is not None else settings.run_dir / "tpmd.sock"
    if socket.exists():
        counter = SocketCounter(socket)
        try:
            counter.read()
        except OSError:
            pass
        else:
            yield counter
            return
    if settings.tpm is None:
        yield None
        return
    from ..tpm.service import TpmService  # noqa: PLC0415

    log.info("the TPM service is not reachable at %s: opening the TPM in this process", socket)
    tpm = TpmService(settings.tpm)
    try:
        yield InProcessCounter(tpm)
    finally:
        tpm.close()


async def verify_installed_log(settings: DaemonSettings) -> Verification | None:
    """Verify the log under the state dir with the device's audit key and TPM counter; None if there is no log."""
    home = settings.runtime.audit_home or settings.state_dir / "audit"
    async with _keys_for(settings) as keys:
        anchored = await has_marker(keys, ANCHORED_MARKER)
        if not (home / "audit.db").exists():
            if anchored:
                return Verification(False, 0, GENESIS, f"there is no audit log under {home}, but the key store says "
                                                       "there was one: it was wiped")
            with _counter_for(settings) as counter:
                counted_so_far = counter.read() if counter is not None else None
            if counted_so_far:  # the key store was wiped too, but the TPM remembers how many records there were
                return Verification(False, 0, GENESIS, f"there is no audit log under {home}, but the TPM counter "
                                                       f"says {counted_so_far} records were written: it was wiped")
            return None
        key = await load_audit_key(keys, create=False)
        counted = await has_marker(keys, COUNTED_MARKER)
    with _counter_for(settings) as counter:
        audit = AuditLog(home, key, counter, anchored=anchored, counted=counted)
        try:
            return audit.verify()
        finally:
            audit.close()
