"""``edgeward config mp``: a manual-provisioning super config from an IoT Hub device connection string.

The connection string holds the device's SAS key, so it is checked here (the same rules IoT Edge applies) and never
shown in a message, and the file written from it is readable by its owner only.
"""

from __future__ import annotations

import re

from ..identity.connection_string import parse_connection_string
from .problems import ConfigError
from .toml_write import dumps

__all__ = ["manual_provisioning_config"]

# IoT Hub's device id and host name rules, as `iotedge config mp` checks them.
_DEVICE_ID = re.compile(r"^[A-Za-z0-9\-:.+%_#*?!(),=@$']{1,128}$")
_HOST = re.compile(r"^[A-Za-z0-9_\-.]+$")


def manual_provisioning_config(connection_string: str) -> str:
    """The text of a config.toml provisioning the device by ``connection_string``; ConfigError if it is invalid."""
    try:
        hub, device_id, key = parse_connection_string(connection_string.strip())
    except ValueError as e:
        raise ConfigError([f"connection string = <redacted>: expected HostName=...;DeviceId=...;"
                           f"SharedAccessKey=<base64> ({e})"], "connection string") from None
    problems = []
    if not _HOST.fullmatch(hub):
        problems.append(f"connection string HostName = {hub!r}: expected a host name")
    if not _DEVICE_ID.fullmatch(device_id):
        problems.append(f"connection string DeviceId = {device_id!r}: expected 1-128 letters, digits or "
                        "-:.+%_#*?!(),=@$'")
    if not key:
        problems.append("connection string SharedAccessKey = <redacted>: expected a non-empty base64 key")
    if problems:
        raise ConfigError(problems, "connection string")
    body = dumps({"provisioning": {"source": "manual", "connection_string": connection_string.strip()}})
    return ("# Manual provisioning, written by `edgeward config mp`.\n"
            "# Check and split it into the services' settings with `edgeward config apply -c <this file>`.\n\n"
            + body)
