"""The names the configuration gives certificates (their kinds, the well-known cert ids, IP networks), apart from
the issuance policy that enforces them (certs/policy.py): reading a config, which every service does, then loads no
X.509 code."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Literal

__all__ = ["DEVICE_SERVER_CERT_ID", "EDGE_CA_CERT_ID", "KINDS", "LOCAL_ID_PREFIX", "IpNetwork", "Kind",
           "default_kind", "parse_ip_networks"]

Kind = Literal["ca", "server", "client", "identity"]
KINDS: tuple[Kind, ...] = ("ca", "server", "client", "identity")
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

EDGE_CA_CERT_ID = "aziot-edged-ca"  # aziot-edged's edge CA
DEVICE_SERVER_CERT_ID = "edgeward-device-server"  # the embedded defaults' device server certificate
LOCAL_ID_PREFIX = "local-id-"  # identityd's local identities, "local-id-<module>"


def default_kind(cert_id: str, *, ca_ids: Iterable[str] = (), identity_ids: Iterable[str] = ()) -> Kind:
    """The kind of a cert id without a configured one: the edge CA and ``ca_ids`` (the local CA) are CAs;
    ``local-id-*`` and ``identity_ids`` (EST identities) are identities; the device server cert is a server; any
    other id is a client leaf, the least a certificate can do."""
    if cert_id == EDGE_CA_CERT_ID or cert_id in set(ca_ids):
        return "ca"
    if cert_id.startswith(LOCAL_ID_PREFIX) or cert_id in set(identity_ids):
        return "identity"
    if cert_id == DEVICE_SERVER_CERT_ID:
        return "server"
    return "client"


def parse_ip_networks(values: Iterable[str]) -> tuple[IpNetwork, ...]:
    """``"10.0.0.1"`` or ``"10.0.0.0/8"``; raises ValueError naming the bad entry."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or network") from None
    return tuple(out)
