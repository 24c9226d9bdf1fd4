"""Bodies of IoT Edge's management API (edgelet's field names and casing)."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from .engine import LogChunk, ModuleStatus
from .identities import ModuleIdentity
from .model import ModuleConfig
from .service import ModuleView

__all__ = ["API_VERSIONS", "frame", "identity_body", "module_details", "module_details_from_spec"]

# Exactly what aziot-edged 1.4/1.5 accepts (2020-10-10 was dropped after 1.2).
API_VERSIONS = ("2018-06-28", "2019-01-30", "2019-10-22", "2019-11-05", "2020-07-07", "2021-12-07", "2022-08-03")


def _runtime_status(status: ModuleStatus | None) -> dict[str, Any]:
    if status is None:
        return {"status": "unknown", "description": "the engine no longer has this module"}
    state = {"created": "stopped"}.get(status.state, status.state)
    body: dict[str, Any] = {"status": state}
    if status.state == "failed" and status.exit_code is not None:
        body["description"] = f"exited with code {status.exit_code}"
    return body


def module_details(view: ModuleView) -> dict[str, Any]:
    reg, status = view.registration, view.status
    config = dict(reg.config.get("config") or {})
    settings = dict(config.get("settings") or {})
    runtime_status = _runtime_status(status)
    said = []
    if view.socket_problem is not None:  # running, but its workload API cannot be reached: say so where status is read
        said.append(f"workload socket unavailable: {view.socket_problem}")
    if view.update_problem is not None:  # the agent's update of itself, done after its answer, failed
        said.append(view.update_problem)
    if said:
        runtime_status["description"] = "; ".join(
            [runtime_status["description"], *said] if "description" in runtime_status else said)
    body_status: dict[str, Any] = {"runtimeStatus": runtime_status}
    if status is not None and status.started_at:
        body_status["startTime"] = status.started_at
    if status is not None and status.finished_at and status.exit_code is not None and status.state != "running":
        body_status["exitStatus"] = {"exitTime": status.finished_at, "statusCode": str(status.exit_code)}
    return {
        "id": reg.engine_id,
        "name": reg.name,
        "type": reg.config.get("type", "docker"),
        "config": {"settings": {"image": settings.get("image", reg.image), "imageHash": reg.image_id,
                                "createOptions": settings.get("createOptions", {})},
                   "env": config.get("env", [])},
        "status": body_status,
    }


def module_details_from_spec(spec: Mapping[str, Any], config: ModuleConfig, start: bool) -> dict[str, Any]:
    """What aziot-edged answers the edge agent's update of itself before the update is done (edgelet-http's
    ModuleDetails::from_spec): the spec as sent (`spec`, parsed as `config`), id "id", running or stopped as asked.
    Registry credentials in the settings are never echoed."""
    sent = spec.get("config")
    settings = sent.get("settings") if isinstance(sent, Mapping) else None
    body_config: dict[str, Any] = {
        "settings": {k: v for k, v in settings.items() if k != "auth"} if isinstance(settings, Mapping) else
        {"image": config.image, "createOptions": dict(config.create_options)}}
    env = sent.get("env") if isinstance(sent, Mapping) else None
    if env is not None:
        body_config["env"] = env
    return {"id": "id", "name": config.name, "type": config.type, "config": body_config,
            "status": {"runtimeStatus": {"status": "running" if start else "stopped"}}}


def identity_body(identity: ModuleIdentity) -> dict[str, Any]:
    return {"moduleId": identity.module_id, "managedBy": identity.managed_by or "IotEdge",
            "generationId": identity.generation_id, "authType": "sas"}


def frame(chunk: LogChunk) -> bytes:
    """Docker's multiplexed log framing (stream id, 3 zero bytes, big-endian length), which the edge agent and
    `docker logs` clients parse."""
    return struct.pack(">BxxxI", chunk.stream, len(chunk.data)) + chunk.data
