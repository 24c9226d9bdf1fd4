"""The `since`/`until` values of module logs and support bundles, read as aziot-edged reads them.

The edge agent passes these through unchanged from its direct methods (`GetModuleLogs`, `UploadSupportBundle`), so
they come in every form aziot-edged accepts, tried in its order: an RFC 3339 time, a unix timestamp (a 32-bit signed
integer), or a duration back from now in humantime's grammar (``10m``, ``1d``, ``2 days 3 hours``, ``1h30m``).
"""

from __future__ import annotations

import datetime as dt
import re
import time

from ..digits import is_number

__all__ = ["BadTime", "parse_since"]

_I32 = (-(2**31), 2**31 - 1)

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)

# humantime's units, in seconds (its months are 30.44 days, its years 365.25 days); units are case-sensitive.
_UNITS: dict[str, float] = {
    **dict.fromkeys(("nanos", "nsec", "ns"), 1e-9),
    **dict.fromkeys(("usec", "us", "µs"), 1e-6),
    **dict.fromkeys(("millis", "msec", "ms"), 1e-3),
    **dict.fromkeys(("seconds", "second", "secs", "sec", "s"), 1),
    **dict.fromkeys(("minutes", "minute", "min", "mins", "m"), 60),
    **dict.fromkeys(("hours", "hour", "hr", "hrs", "h"), 3600),
    **dict.fromkeys(("days", "day", "d"), 86400),
    **dict.fromkeys(("weeks", "week", "wk", "wks", "w"), 7 * 86400),
    **dict.fromkeys(("months", "month", "M"), 2_630_016),
    **dict.fromkeys(("years", "year", "yr", "yrs", "y"), 31_557_600),
}
# A span is digits then a unit (whitespace allowed around both); a duration is one or more spans.
_SPAN = re.compile(r"\s*([0-9][0-9\s]*?)\s*([A-Za-zµ]+)\s*")
_MAX_SECONDS = 2**64  # humantime's counter is a u64


class BadTime(ValueError):
    """Not a time aziot-edged would accept; the message says which forms are."""


def _rfc3339(value: str) -> int | None:
    m = _RFC3339.fullmatch(value)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    zone = m.group(8)
    leap = second == 60  # RFC 3339 allows a leap second; it is the second after :59
    try:
        offset = dt.timedelta(0) if zone in ("Z", "z") else \
            (1 if zone[0] == "+" else -1) * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        if zone not in ("Z", "z") and (int(zone[1:3]) > 23 or int(zone[4:6]) > 59):
            return None
        moment = dt.datetime(year, month, day, hour, minute, 59 if leap else second,
                             tzinfo=dt.timezone(offset))
    except ValueError:
        return None
    return int(moment.timestamp()) + (1 if leap else 0)


def _duration(value: str) -> float | None:
    if value == "0":
        return 0.0
    if not value.strip():
        return None
    total = 0.0
    pos = 0
    while pos < len(value):
        m = _SPAN.match(value, pos)
        if m is None:
            return None
        digits = re.sub(r"\s", "", m.group(1))
        unit = _UNITS.get(m.group(2))
        if unit is None or not is_number(digits) or int(digits) >= _MAX_SECONDS:
            return None
        total += int(digits) * unit
        pos = m.end()
    return total if total < _MAX_SECONDS else None


def parse_since(value: str, what: str, now: float | None = None) -> int:
    """Unix seconds for `value` (an RFC 3339 time, unix seconds, or a duration back from `now`), within the 32-bit
    range aziot-edged uses; BadTime otherwise."""
    seconds = _rfc3339(value)
    if seconds is None and _INTEGER.fullmatch(value):
        seconds = int(value)
    if seconds is None:
        back = _duration(value)
        if back is not None:
            seconds = int((time.time() if now is None else now) - back)
    if seconds is None:
        raise BadTime(f"invalid parameter: {what} must be a duration (10m, 1d, 2 days 3 hours), an RFC 3339 time "
                      f"or unix seconds, got {value[:40]!r}")
    if not _I32[0] <= seconds <= _I32[1]:
        raise BadTime(f"invalid parameter: {what} is out of range: {value[:40]!r}")
    return seconds
