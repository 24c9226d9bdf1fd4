"""Who a service trusts with every object it holds (every key id, cert id, identity): root, its own uid, and the
service users its socket's row names (aziot's daemons: the certificates service creating its CAs' keys, the identity
service its device keys). Packaged, each runs as its own user; all in one process, they are all this uid."""

from __future__ import annotations

import os

from .classify import service_uids
from .table import SOCKETS

__all__ = ["trusted_service_uids"]


def trusted_service_uids(service: str) -> frozenset[int]:
    return frozenset({0, os.getuid()}) | service_uids(SOCKETS[service].service_users)
