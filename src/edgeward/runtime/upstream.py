"""Nested edge: what a device under a parent (``parent_hostname``) tells its modules about their upstream, and the
``$upstream`` keyword in the agent's image.

In IoT Edge the edge agent and edgeHub talk to the parent device's edgeHub (their upstream gateway), while every
other module talks to this device's edgeHub. aziot-edged gives the agent ``IOTEDGE_GATEWAYHOSTNAME`` = the parent
(watchdog.rs, only when the gateway is not the hub itself); the agent passes the same to edgeHub, and gives every
other module ``IOTEDGE_GATEWAYHOSTNAME`` = this device's host name plus ``IOTEDGE_PARENTHOSTNAME`` = the parent
(CreateOrUpdateCommand.cs). Edgeward's runtime sets the ``IOTEDGE_*`` environment of every module itself, so it
applies the same rule here. Without a parent, the agent and edgeHub get no ``IOTEDGE_GATEWAYHOSTNAME`` (they would
take it for a parent and connect to this very device).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .model import ModuleConfig

__all__ = ["UPSTREAM", "resolve_upstream", "upstream_env"]

UPSTREAM = "$upstream"  # edgelet-settings' UPSTREAM_PARENT_KEYWORD
_RUNTIME_IDENTITIES = ("$edgeAgent", "$edgeHub")


def upstream_env(identity: str, hostname: str, parent: str | None) -> dict[str, str]:
    """The gateway variables of the module whose hub identity is ``identity`` on device ``hostname``."""
    if identity in _RUNTIME_IDENTITIES:
        return {"IOTEDGE_GATEWAYHOSTNAME": parent} if parent is not None else {}
    env = {"IOTEDGE_GATEWAYHOSTNAME": hostname}
    if parent is not None:
        env["IOTEDGE_PARENTHOSTNAME"] = parent
    return env


def _resolved(value: Any, parent: str) -> Any:
    return parent + value[len(UPSTREAM):] if isinstance(value, str) and value.startswith(UPSTREAM) else value


def resolve_upstream(agent: ModuleConfig, parent: str) -> ModuleConfig:
    """The agent with a leading ``$upstream`` of its image (and of its registry credentials' server address)
    replaced by the parent's host name, as aziot-edged resolves it before it pulls the agent: a child device pulls
    its agent from the registry its parent serves (``$upstream:443/azureiotedge-agent:1.5``)."""
    auth: Mapping[str, Any] | None = agent.auth
    if auth is not None:
        auth = {key: _resolved(value, parent) if key.lower() == "serveraddress" else value
                for key, value in auth.items()}
    return replace(agent, image=_resolved(agent.image, parent), auth=auth)
