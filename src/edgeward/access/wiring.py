"""Putting the guard on each service's app: the host services' socket modes and classifiers, in one place."""

from __future__ import annotations

import os
from collections.abc import Iterable

from aiohttp import web

from .classify import AttestedClassifier, Attestor, HostClassifier, ModuleOf
from .guard import AccessGuard, install_guard
from .table import SOCKETS

__all__ = ["guard_attested_service", "guard_host_service", "socket_mode"]


def socket_mode(service: str, principal_uids: Iterable[int]) -> int:
    """The table's mode, widened to 0666 only where [[principal]] entries name uids that could not otherwise
    connect (no group is set up for them in the all-in-one daemon); the guard still refuses every caller the
    table does not name, so the wider mode admits no one new."""
    mode = SOCKETS[service].mode
    others = {uid for uid in principal_uids if uid not in (0, os.getuid())}
    return 0o666 if others and service != "tpmd" else mode


def guard_host_service(app: web.Application, service: str, principal_uids: Iterable[int] = (),
                       module_of: ModuleOf | None = None) -> web.Application:
    policy = SOCKETS[service]
    return install_guard(app, AccessGuard(policy, HostClassifier(policy, principal_uids, module_of)))


def guard_attested_service(app: web.Application, service: str, attestor: Attestor) -> web.Application:
    """The module runtime's sockets: callers are told apart by attestation."""
    return install_guard(app, AccessGuard(SOCKETS[service], AttestedClassifier(attestor)))
