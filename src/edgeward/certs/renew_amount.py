"""How far into a certificate's life it is renewed: a share ("80%") or a time before expiry ("30min", "2day"). Apart
from the certs service's settings so that checking a super config (config/issuance.py) does not load them all."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

__all__ = ["RenewAmount", "parse_renew_amount"]


@dataclass(frozen=True)
class RenewAmount:
    """A share of the certificate's lifetime ("80%") or a fixed time ("30min", "2day")."""

    fraction: float | None = None
    duration: timedelta | None = None

    def of(self, lifetime: timedelta) -> timedelta:
        if self.fraction is not None:
            return lifetime * self.fraction
        assert self.duration is not None
        return self.duration


_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|s|sec|min|h|hour|day|d)\s*$")


def parse_renew_amount(value: str) -> RenewAmount:
    m = _AMOUNT.match(value)
    if not m:
        raise ValueError(f"{value!r} is neither a percentage (80%) nor a duration (30min, 12h, 2day)")
    number, unit = float(m.group(1)), m.group(2)
    if unit == "%":
        if not 0 < number < 100:
            raise ValueError(f"{value!r}: a percentage must be between 0 and 100")
        return RenewAmount(fraction=number / 100)
    seconds = {"s": 1, "sec": 1, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}[unit] * number
    if seconds <= 0:
        raise ValueError(f"{value!r}: a duration must be positive")
    return RenewAmount(duration=timedelta(seconds=seconds))
