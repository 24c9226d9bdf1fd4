"""When the device provisions again on its own: IoT Edge 1.5's ``auto_reprovisioning_mode``.

- ``Dynamic`` (the default): when IoT Hub refuses the device's own credentials (401/403 to a module identity
  call), the device may have been moved to another hub, so it registers with DPS again and retries the call once.
  IoT Edge does this from its edge agent (which asks ``POST /device/reprovision``); the identity service does it
  here, for every caller. At most one such reprovisioning per interval: a hub that keeps refusing (or a hostile
  network peer answering 401) must not make the device hammer DPS.
- ``AlwaysOnStartup``: every start registers with DPS again instead of starting from the backup (the backup is
  still served while DPS cannot be reached, and the registration is retried).
- ``OnErrorOnly``: never on its own; only ``POST /identities/device/reprovision`` (or a renewed identity
  certificate) provisions again.

A manually provisioned device has nothing to reprovision with, as in IoT Edge: the mode is ignored.
"""

from __future__ import annotations

import time

from ..http.errors import HttpError
from .settings import DpsProvisioning, IdentitySettings

__all__ = ["DYNAMIC_INTERVAL", "ReprovisioningPolicy"]

DYNAMIC_INTERVAL = 60.0  # seconds between two reprovisionings triggered by the hub's refusals
_MOVED = frozenset({401, 403})  # the hub no longer accepts this device's credentials


class ReprovisioningPolicy:
    def __init__(self, settings: IdentitySettings, interval: float = DYNAMIC_INTERVAL) -> None:
        self.mode = settings.auto_reprovisioning_mode
        self._dps = isinstance(settings.provisioning, DpsProvisioning)
        self._interval = interval
        self._last: float | None = None

    def fresh_on_startup(self) -> bool:
        """Whether a start registers again rather than restoring the backup made under this configuration."""
        return self._dps and self.mode == "AlwaysOnStartup"

    def moved(self, error: HttpError) -> bool:
        """Whether this hub error should make the device register again now (and the call be retried once)."""
        if not (self._dps and self.mode == "Dynamic" and getattr(error, "cloud_status", None) in _MOVED):
            return False
        now = time.monotonic()
        if self._last is not None and now - self._last < self._interval:
            return False
        self._last = now
        return True
