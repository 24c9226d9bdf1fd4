"""Edgeward as a Keylime agent: registration with the TPM service's EK and a persisted AK, the agent API over mTLS,
the measurement list, payloads stored and never run, revocation notices recorded.

Start order, and why: the kernel's IMA first (if it owns PCR 10 nothing below can be true); then the TPM keys and
the AK, checked against the one registered before (the registrar refuses another AK for a known UUID); then the
measurement list, rebuilt and checked against PCR 10 (a list that does not replay is never served); then the API
(so the registrar's contact address answers); then registration and activation.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import logging
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..attest.audit import AuditLog
from ..fsutil import atomic_write, private_dir
from ..http.connections import CONNECTION_POLICY, ConnectionLimits, ConnectionPolicy, GuardedRunner
from ..tasks import cancel_all
from .agent_keys import AgentKeys, load_or_create_keys
from .kernel_ima import check_kernel_ima
from .listener import AgentSite, PeerCaps, learn_verifiers
from .mlist import MeasurementList, TpmRunner
from .notice_tally import UnverifiedTally
from .notices import NoticeHandler
from .payloads import Payloads
from .quotes import Quoter
from .registrar import RegistrarError, activate, auth_tag, register
from .revocation import check_revocation_cert
from .revoked import RevocationGate
from .routes import build_agent_app
from .settings import KeylimeSettings
from .tpm_ops import AkInfo, activate_credential, ek_certificate, ek_public, ensure_ak
from .verifier_ca import check_verifier_ca

__all__ = ["AgentIdentityChanged", "KeylimeAgent", "uuid_from_ek"]

log = logging.getLogger(__name__)
_UUID_NAMESPACE = uuid.UUID("5b0c4a3e-2f1d-4e0a-9c65-6b0e9a7d3f21")  # Edgeward's: EK-derived agent UUIDs
_RETRY_CAP = 60.0


class AgentIdentityChanged(RuntimeError):
    """The TPM's EK or AK is not the one this agent registered with."""


def uuid_from_ek(ek_public: bytes) -> str:
    """The same TPM always registers as the same agent, with no setting to keep in step."""
    return str(uuid.uuid5(_UUID_NAMESPACE, hashlib.sha256(ek_public).hexdigest()))


class KeylimeAgent:
    def __init__(self, settings: KeylimeSettings, tpm: TpmRunner, audit: AuditLog, *,
                 on_revoked: Callable[[], Awaitable[None]] | None = None,
                 gate: RevocationGate | None = None) -> None:
        self.settings = settings
        self.tpm = tpm
        self.audit = audit
        self.on_revoked = on_revoked
        self.home = private_dir(settings.state_dir)
        self.gate = gate or RevocationGate(self.home)
        self.unverified = UnverifiedTally(audit)
        self.notices = NoticeHandler(settings, self.home, audit, self.unverified, gate=self.gate,
                                     on_revoked=on_revoked)
        self.uuid = ""
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # set by start()
        self.keys: AgentKeys
        self.quoter: Quoter
        self.payloads: Payloads
        self.mlist: MeasurementList
        self.timings: dict[str, float] = {}

    async def start(self) -> None:
        verifier_ca = check_verifier_ca(self.settings.verifier_ca)
        check_kernel_ima(self.settings.ima_securityfs)
        self._tasks.append(asyncio.create_task(self.unverified.run(), name="keylime-unverified-notices"))
        if self.settings.revocation_cert is not None:  # configured: there, readable, not the verifier's CA, now
            check_revocation_cert(self.settings.revocation_cert, verifier_ca)
        elif self.settings.revocation_action == "stop_modules":
            log.warning("keylime: revocation_action = \"stop_modules\" but no revocation_cert is configured: "
                        "revocation notices are recorded as unverified and NEVER acted on (any client of the "
                        "verifier's CA can deliver a payload certificate); set [edgeward.keylime] revocation_cert")
        ek, ek_cert = await self.tpm.run_exclusive(lambda e: (ek_public(e), ek_certificate(e)))
        ak: AkInfo = await self.tpm.run_exclusive(functools.partial(
            ensure_ak, handle=self.settings.ak_handle, algorithm=self.settings.ak_algorithm))
        self.uuid = self.settings.agent_uuid or uuid_from_ek(ek)
        self._check_identity(ek, ak)
        self.keys = load_or_create_keys(self.home, self.uuid, self.settings.contact)
        self.payloads = Payloads(self.home, self.keys.payload_key, self.uuid, self.audit)
        self.mlist = MeasurementList(self.audit, self.home / "measurements.json", self.tpm)
        await self.mlist.start()
        self.quoter = Quoter(self.tpm, ak.handle, ak.algorithm, self.keys.payload_pubkey_pem, self.mlist)
        await self._serve()
        try:
            await self._register(ek, ek_cert, ak)
        except RegistrarError as e:
            if e.refused:  # a squatted UUID, or a 403 forged on the registrar's plain HTTP: this agent only is off
                log.error("keylime: %s", e)
                self.audit.append("keylime.registration_refused", None, {"uuid": self.uuid, "why": str(e)})
                return
            log.warning("keylime: registration failed (%s); retrying in the background", e)
            self._tasks.append(asyncio.create_task(self._register_later(ek, ek_cert, ak), name="keylime-register"))

    # identity and registration ------------------------------------------------------------------------------
    def _check_identity(self, ek: bytes, ak: AkInfo) -> None:
        record = self.home / "registration.json"
        if not record.exists():
            return
        doc = json.loads(record.read_bytes())
        if doc.get("uuid") != self.uuid:
            return  # another UUID is another agent to the registrar
        for name, have in (("ek", ek), ("ak", ak.public)):
            if doc.get(name) != base64.b64encode(have).decode():
                raise AgentIdentityChanged(
                    f"the TPM's {name.upper()} is not the one agent {self.uuid} registered with (the TPM was cleared, "
                    f"or [edgeward.keylime] ak_handle or ak_algorithm changed): the registrar refuses that; remove "
                    f"the old record (keylime_tenant -c regdelete -u {self.uuid}) and {record}, then restart")

    async def _register(self, ek: bytes, ek_cert: bytes | None, ak: AkInfo) -> None:
        started = time.perf_counter()
        s = self.settings
        challenge = await register(s.registrar_url, self.uuid, ek=ek, ak=ak.public, ek_cert=ek_cert,
                                   mtls_cert=self.keys.tls_cert_pem, ip=s.contact, port=s.listen_port)
        secret = await self.tpm.run_exclusive(functools.partial(
            activate_credential, ak_handle=ak.handle, credential=challenge.credential, secret=challenge.secret))
        await activate(s.registrar_url, self.uuid, auth_tag(secret, self.uuid))
        self.timings["registration_seconds"] = time.perf_counter() - started
        atomic_write(self.home / "registration.json", json.dumps({
            "uuid": self.uuid, "ek": base64.b64encode(ek).decode(), "ak": base64.b64encode(ak.public).decode(),
            "registrar": s.registrar_url}).encode())
        self.audit.append("keylime.registered", None, {
            "uuid": self.uuid, "registrar": s.registrar_url, "ak_sha256": hashlib.sha256(ak.public).hexdigest(),
            "ak_handle": ak.handle, "seconds": round(self.timings["registration_seconds"], 3)})
        log.info("keylime: registered and activated as agent %s", self.uuid)

    async def _register_later(self, ek: bytes, ek_cert: bytes | None, ak: AkInfo) -> None:
        delay = 2.0
        while True:
            await asyncio.sleep(delay)
            try:
                await self._register(ek, ek_cert, ak)
                return
            except RegistrarError as e:
                log.warning("keylime: registration failed (%s)", e)
                if e.refused:
                    self.audit.append("keylime.registration_refused", None, {"uuid": self.uuid, "why": str(e)})
                    return
                delay = min(delay * 2, _RETRY_CAP)

    # the API ----------------------------------------------------------------------------------------------------
    def _tls(self) -> ssl.SSLContext:
        """Server TLS with the certificate the registrar holds; clients must present one chaining to the
        verifier's CA. There is no setting that turns this off."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.settings.verifier_ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(str(self.keys.tls_cert), str(self.keys.tls_key))
        return ctx

    async def _serve(self) -> None:
        app = build_agent_app(self)
        # The process's connection guard and deadlines, as on every Edgeward listener: the verifier and tenant
        # need a handful of connections, and an idle or stalled one must not hold a descriptor the TPM service
        # and the runtime in this process need.
        app[CONNECTION_POLICY] = ConnectionPolicy(ConnectionLimits.from_environ().capped(AGENT_CONNECTIONS))
        caps = PeerCaps(verifiers=self.settings.verifier_addresses)
        learn_verifiers(app, caps)  # before the runner freezes the app
        runner = GuardedRunner(app)
        await runner.setup()
        site = AgentSite(runner, self.settings.listen_address, self.settings.listen_port, ssl_context=self._tls(),
                         caps=caps)
        await site.start()
        self._runner = runner
        log.info("keylime agent %s listening on %s:%d (mTLS)", self.uuid, self.settings.listen_address,
                 self.settings.listen_port)

    async def revocation(self, body: Any) -> None:
        """Record the notice; act on it only if the operator's revocation_cert vouches for its signer, it revokes
        this agent, it is new, and the policy says so (:mod:`.notices`)."""
        await self.notices.handle(body, self.uuid)

    async def stop(self) -> None:
        if hasattr(self, "mlist"):
            self.mlist.flush()
        await cancel_all(self._tasks)
        await self.unverified.flush()  # what the window held back is still recorded
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


AGENT_CONNECTIONS = 64
