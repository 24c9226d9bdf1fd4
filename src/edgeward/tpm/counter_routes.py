"""HTTP handlers of the audit counter (Edgeward's addition to the TPM API): read it, and move it forward.

Reading tells nothing secret. Incrementing is refused to everyone but root and the TPM service's own user: a caller
that could move the counter could make an intact audit log read as rolled back. The routes are a table of their own,
installed next to the aziot routes by :func:`install_counter_routes`.
"""

from __future__ import annotations

import os

from aiohttp import web

from ..http import RouteTable, reply
from ..http.errors import Forbidden
from ..http.peercred import caller_of
from . import wire
from .routes import TPM_API

__all__ = ["counter_routes", "install_counter_routes"]

counter_routes = RouteTable(wire.API_VERSIONS)


def _may_increment(uid: int) -> bool:
    return uid in (0, os.getuid())


@counter_routes.get("/edgeward/audit-counter", since=wire.EDGEWARD_VERSION)
async def read_audit_counter(request: web.Request) -> web.Response:
    value = await request.app[TPM_API].read_audit_counter()
    return reply(wire.AuditCounterResponse(value))


@counter_routes.post("/edgeward/audit-counter/increment", since=wire.EDGEWARD_VERSION)
async def increment_audit_counter(request: web.Request) -> web.Response:
    uid = caller_of(request).uid
    if not _may_increment(uid):
        raise Forbidden(f"uid {uid} may not move the audit counter (only root and the TPM service's user may)")
    value = await request.app[TPM_API].increment_audit_counter()
    return reply(wire.AuditCounterResponse(value))


def install_counter_routes(app: web.Application) -> None:
    """Add the counter routes to a TPM app built by :func:`~edgeward.tpm.routes.build_tpm_app`."""
    counter_routes.install(app)
