"""Automatic renewal: every managed cert is renewed before its threshold, retried with backoff on failure, and
never left without a valid cert + key pair.

With ``rotate_key`` a fresh key is created under ``<key_id>.next``, the new cert is stored, and only then is the
key moved into place. A crash between those two steps leaves a cert that matches the ``.next`` key; ``recover``
finishes the move at the next start, so after any crash the pair is either the old one or the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..http.errors import HttpError
from .dn import subject_name
from .service import CertService
from .settings import RenewPolicy
from .x509sign import handle_public_key, same_public_key, sign_csr

__all__ = ["ManagedCert", "RenewalEngine", "RenewalEvent", "RenewalStatus", "failure_reason", "next_renewal"]

log = logging.getLogger(__name__)

JITTER = 0.05  # up to 5% of the lifetime earlier, so a fleet does not renew in the same second
MIN_RETRY = dt.timedelta(seconds=1)
FIRST_RETRY_WITHOUT = dt.timedelta(seconds=10)
MAX_RETRY_WITHOUT = dt.timedelta(minutes=10)


@dataclass(frozen=True)
class ManagedCert:
    cert_id: str
    key_id: str
    policy: RenewPolicy
    common_name: str | None = None
    subject: tuple[tuple[str, str], ...] = ()  # the configured DN, for the first request (certs/dn.py)

    @property
    def temp_key_id(self) -> str:
        return f"{self.key_id}.next"


@dataclass(frozen=True)
class RenewalEvent:
    cert_id: str
    not_after: dt.datetime
    rotated_key: bool
    previous_not_after: dt.datetime | None


@dataclass
class RenewalStatus:
    cert_id: str
    not_after: dt.datetime | None = None
    next_attempt: dt.datetime | None = None
    failures: int = 0
    last_error: str | None = None
    renewals: int = 0


def failure_reason(e: BaseException) -> str:
    """What went wrong, never empty: some exceptions (a token's GeneralError) carry no text, only their type."""
    text = e.message if isinstance(e, HttpError) else str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def next_renewal(cert: x509.Certificate, policy: RenewPolicy, rng: random.Random) -> dt.datetime:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    lifetime = end - start
    if policy.threshold.fraction is not None:
        due = start + lifetime * policy.threshold.fraction
    else:
        due = end - policy.threshold.of(lifetime)
    return due - lifetime * (JITTER * rng.random())


@dataclass
class RenewalEngine:
    service: CertService
    managed: list[ManagedCert]
    rng: random.Random = field(default_factory=random.Random)
    now: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _subscribers: list[asyncio.Queue[RenewalEvent]] = field(default_factory=list)
    _status: dict[str, RenewalStatus] = field(default_factory=dict)
    _wake: dict[str, asyncio.Event] = field(default_factory=dict)
    # How long a stop waits for a renewal's commit under way (the new chain written, the new key moved in place): a
    # stop that cut it in half would leave the next start to finish it (recover()), with a warning meant for crashes.
    # What comes before the commit (a CSR, the issuer's answer) is cancelled at once.
    stop_grace: float = 10.0

    def subscribe(self) -> asyncio.Queue[RenewalEvent]:
        """Renewal events for other parts (edge CA, identity) to react to."""
        q: asyncio.Queue[RenewalEvent] = asyncio.Queue()
        self._subscribers.append(q)
        return q

    def status(self) -> list[RenewalStatus]:
        return [self._status[m.cert_id] for m in self.managed if m.cert_id in self._status]

    async def start(self) -> None:
        for m in self.managed:
            self._status[m.cert_id] = RenewalStatus(m.cert_id)
            self._wake[m.cert_id] = asyncio.Event()
            try:
                await self.recover(m)
            except Exception as e:
                log.error("recovery of %r failed: %s", m.cert_id, failure_reason(e))
            self._tasks.append(asyncio.create_task(self._loop(m), name=f"renew:{m.cert_id}"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()

    def wake(self, cert_id: str) -> None:
        self._wake[cert_id].set()

    # crash recovery ---------------------------------------------------------------------------------------
    async def recover(self, m: ManagedCert) -> None:
        """Finish or undo an interrupted key rotation, so cert and key match again."""
        keys = self.service.keys
        temp_handle = await self._try_load(m.temp_key_id)
        if temp_handle is None:
            return
        chain = self.service.read_chain(m.cert_id)
        temp_public = await handle_public_key(keys, temp_handle)
        if chain is not None and same_public_key(chain[0].public_key(), temp_public):
            log.warning("finishing the key rotation of %r that a crash (or a stop past its grace) interrupted",
                        m.cert_id)
            await keys.move_key_pair(m.temp_key_id, m.key_id)
        else:
            log.info("discarding the unused new key of an interrupted renewal of %r", m.cert_id)
            await keys.delete_key_pair(temp_handle)

    async def _uncut(self, work: Coroutine[Any, Any, None], cert_id: str) -> None:
        """Run a renewal's commit to its end even if the renewal is cancelled meanwhile (a stop): the cancel waits
        for it, up to :attr:`stop_grace`, still holding the cert id's lock, and then goes on."""
        task = asyncio.create_task(work, name=f"commit:{cert_id}")
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            done, _ = await asyncio.wait({task}, timeout=self.stop_grace)
            if not done:
                log.warning("stopping during the renewal of %r: the next start finishes or undoes it", cert_id)
                task.cancel()
            elif not task.cancelled() and (error := task.exception()) is not None:
                log.warning("renewal of %r failed as the service stopped: %s", cert_id, failure_reason(error))
            raise

    async def _try_load(self, key_id: str) -> str | None:
        try:
            return await self.service.keys.load_key_pair(key_id)
        except HttpError as e:
            if e.status == 404:
                return None
            raise

    # the loop ---------------------------------------------------------------------------------------------
    async def _due(self, m: ManagedCert) -> tuple[dt.datetime, x509.Certificate | None]:
        chain = self.service.read_chain(m.cert_id)
        if chain is None:
            return self.now(), None  # missing or unreadable: renew at once
        handle = await self._try_load(m.key_id)
        key = await handle_public_key(self.service.keys, handle) if handle is not None else None
        if key is None or not same_public_key(chain[0].public_key(), key):
            return self.now(), chain[0]  # cert and key disagree: renew at once
        if chain[0].not_valid_after_utc <= self.now():
            return self.now(), chain[0]
        return next_renewal(chain[0], m.policy, self.rng), chain[0]

    async def _sleep_until(self, m: ManagedCert, when: dt.datetime) -> None:
        delay = (when - self.now()).total_seconds()
        wake = self._wake[m.cert_id]
        if delay > 0:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that lands as the event fires
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await wake.wait()
        wake.clear()

    async def _loop(self, m: ManagedCert) -> None:
        status = self._status[m.cert_id]
        while True:
            try:
                due, cert = await self._due(m)
            except Exception as e:
                # Backed off like a failed renewal (a token that is down would otherwise be asked every 5 s).
                status.failures += 1
                status.last_error = f"cannot read cert or key: {failure_reason(e)}"
                due, cert = self.now() + self._backoff(m, None, status.failures), None
                log.warning("renewal of %r cannot read its cert or key (attempt %d), retrying in %.1fs: %s",
                            m.cert_id, status.failures, (due - self.now()).total_seconds(), status.last_error)
            status.next_attempt = due
            status.not_after = cert.not_valid_after_utc if cert else None
            await self._sleep_until(m, due)
            try:
                await self.renew(m)
            except Exception as e:
                status.failures += 1
                status.last_error = failure_reason(e)
                backoff = self._backoff(m, cert, status.failures)
                status.next_attempt = self.now() + backoff
                # A traceback only for what is neither a service's answer nor the system's (disk full...): a bug,
                # and only the first time.
                log.warning("renewal of %r failed (attempt %d), retrying in %.1fs: %s", m.cert_id, status.failures,
                            backoff.total_seconds(), status.last_error,
                            exc_info=status.failures == 1 and not isinstance(e, (HttpError, OSError)))
                await self._sleep_until(m, status.next_attempt)

    def _backoff(self, m: ManagedCert, cert: x509.Certificate | None, failures: int) -> dt.timedelta:
        """Exponential backoff from the policy's retry interval, with jitter.

        While a valid cert remains, retries stay within half its remaining life; without one (missing or expired)
        the device has no identity, so retries start within seconds and never wait more than MAX_RETRY_WITHOUT.
        """
        valid = cert is not None and cert.not_valid_after_utc > self.now()
        lifetime = (cert.not_valid_after_utc - cert.not_valid_before_utc) if cert else self.service.lifetime(m.cert_id)
        base = max(MIN_RETRY, m.policy.retry.of(lifetime))
        if not valid:
            base = min(base, FIRST_RETRY_WITHOUT)
        backoff: dt.timedelta = base * min(2 ** (failures - 1), 64) * (1 + JITTER * self.rng.random())
        if cert is not None and valid:
            half_left: dt.timedelta = (cert.not_valid_after_utc - self.now()) / 2
            return min(backoff, max(MIN_RETRY, half_left))
        return min(backoff, MAX_RETRY_WITHOUT)

    async def renew(self, m: ManagedCert) -> RenewalEvent:
        """Renew one cert now. Raises on failure; the old pair stays in place."""
        svc, keys = self.service, self.service.keys
        async with svc.lock(m.cert_id):
            old = svc.read_chain(m.cert_id)
            previous = old[0].not_valid_after_utc if old else None
            # a renewal keeps the old subject, as IoT Edge's does; the first request carries the configured DN
            subject = old[0].subject if old else subject_name(m.subject) if m.subject else x509.Name(
                [x509.NameAttribute(NameOID.COMMON_NAME, m.common_name or m.cert_id)])
            builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
            # what the policy allows (a CA's extensions; the old names and usages still allowed), so that an EST
            # server is asked for what the cert id may carry
            for value, critical in svc.policy(m.cert_id).renewal_request(old[0] if old else None):
                builder = builder.add_extension(value, critical=critical)
            rotate = m.policy.rotate_key or await self._try_load(m.key_id) is None
            if rotate:
                stale = await self._try_load(m.temp_key_id)
                if stale is not None:
                    await keys.delete_key_pair(stale)
                handle = await keys.create_key_pair_if_not_exists(m.temp_key_id, "ec-p256:rsa-2048:*")
                key_id = m.temp_key_id
            else:
                handle = await keys.load_key_pair(m.key_id)
                key_id = m.key_id
            public = await handle_public_key(keys, handle)
            csr = await sign_csr(builder, keys, handle, public)
            chain = await svc.issue_chain(m.cert_id, csr, None, renewing=old is not None, self_key=key_id)

            async def commit() -> None:
                await svc.write_chain(m.cert_id, chain)
                if rotate:
                    await keys.move_key_pair(m.temp_key_id, m.key_id)

            await self._uncut(commit(), m.cert_id)
        event = RenewalEvent(m.cert_id, chain[0].not_valid_after_utc, rotate, previous)
        status = self._status.setdefault(m.cert_id, RenewalStatus(m.cert_id))
        status.failures, status.last_error, status.not_after = 0, None, event.not_after
        status.renewals += 1
        log.info("renewed cert %r (key %s), valid until %s", m.cert_id, "rotated" if rotate else "kept",
                 event.not_after.isoformat())
        for q in self._subscribers:
            q.put_nowait(event)
        return event
