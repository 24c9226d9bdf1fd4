"""An IoT Hub device connection string, as `edgeward init` and `config import` take it and aziot's
``provisioning.connection_string`` holds it. Apart from the identity service's settings so that checking a super
config (config/provisioning.py) does not load them."""

from __future__ import annotations

import binascii

from ..config.b64 import decode_key

__all__ = ["parse_connection_string"]


def parse_connection_string(value: str) -> tuple[str, str, bytes]:
    """``HostName=...;DeviceId=...;SharedAccessKey=...`` -> (hub, device id, key)."""
    parts = {}
    for item in value.split(";"):
        name, eq, v = item.partition("=")
        if not eq:
            raise ValueError("a connection string is name=value pairs separated by ';'")
        parts[name.strip()] = v.strip()
    missing = [k for k in ("HostName", "DeviceId", "SharedAccessKey") if not parts.get(k)]
    if missing:
        raise ValueError(f"the connection string lacks {', '.join(missing)}")
    try:
        key = decode_key(parts["SharedAccessKey"])  # padding optional, as aziot
    except (binascii.Error, ValueError):
        raise ValueError("SharedAccessKey is not base64") from None
    return parts["HostName"], parts["DeviceId"], key
