"""Image garbage collection (IoT Edge's ``[image_garbage_collection]``).

As aziot-edged does: every image the runtime pulled or created a module from is remembered with the time it was
last used; once a day at ``cleanup_time`` (local time), then every ``cleanup_recurrence``, the images no module
has used for longer than ``image_age_cleanup_threshold`` are removed from the engine. Never removed: an image a
container still uses (any container on the engine, not only Edgeward's: removing it would fail or orphan it), and
the image of the configured edge agent (``[agent.config] image``), which the watchdog needs to recreate the agent.
Images Edgeward never pulled or used are never touched.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..config.problems import Problems
from ..fsutil import atomic_write
from .durations import _duration

__all__ = ["DAY", "ImageCollector", "ImageGcSettings", "ImageUse", "parse_image_gc", "seconds_until"]

log = logging.getLogger(__name__)

DAY = 86400.0
_HHMM = re.compile(r"([01]?[0-9]|2[0-3]):([0-5]?[0-9])", re.ASCII)  # chrono's %H:%M takes "7:05" too


@dataclass(frozen=True)
class ImageGcSettings:
    enabled: bool = True
    recurrence: float = DAY  # seconds, a whole number of days (as aziot-edged requires)
    threshold: float = 7 * DAY  # seconds an image may stay unused
    cleanup_minute: int = 0  # minutes after local midnight of the first run each cycle


def parse_image_gc(doc: Mapping[str, Any], p: Problems) -> ImageGcSettings:
    where = "image_garbage_collection"
    raw = p.get(doc, where, "", dict, {})
    p.warn_unknown(raw, {"enabled", "cleanup_recurrence", "image_age_cleanup_threshold", "cleanup_time"}, where)
    enabled = p.get(raw, "enabled", where, bool, True)
    durations: list[float] = []
    for key, default, days_only in (("cleanup_recurrence", "1d", True), ("image_age_cleanup_threshold", "7d", False)):
        text = p.get(raw, key, where, str, default)
        seconds = _duration(text)
        if seconds is None:
            p.add(f"{where}.{key}", text, 'a duration such as "1d", "12h" or "2 days 3 hours"')
            seconds = _duration(default)
        elif days_only and (seconds <= 0 or seconds % DAY):
            p.add(f"{where}.{key}", text, 'a whole number of days, such as "1d" or "7d"')
            seconds = _duration(default)
        assert seconds is not None
        durations.append(seconds)
    when = p.get(raw, "cleanup_time", where, str, "00:00")
    m = _HHMM.fullmatch(when)
    if m is None:
        p.add(f"{where}.cleanup_time", when, 'a time of day as "HH:MM" (24-hour, such as "00:00" or "23:30")')
        minute = 0
    else:
        minute = int(m.group(1)) * 60 + int(m.group(2))
    return ImageGcSettings(enabled=enabled, recurrence=durations[0], threshold=durations[1], cleanup_minute=minute)


def seconds_until(minute_of_day: int, now: dt.datetime) -> float:
    """Seconds from ``now`` (local, aware or naive) to the next ``minute_of_day``; a whole day when it is now."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    target = midnight + dt.timedelta(minutes=minute_of_day)
    if target <= now:
        target += dt.timedelta(days=1)
    return (target - now).total_seconds()


class ImageUse:
    """image id -> unix time of its last use, in a JSON file written atomically (survives restarts)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> dict[str, float]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("image use records at %s are unreadable (%s); starting them afresh", self.path, e)
            return {}
        return {str(k): float(v) for k, v in raw.items() if isinstance(v, (int, float))} if isinstance(raw, dict) \
            else {}

    def _write(self, records: Mapping[str, float]) -> None:
        atomic_write(self.path, json.dumps(dict(sorted(records.items()))).encode())

    def record(self, image_id: str, when: float | None = None) -> None:
        if not image_id:
            return
        with self._lock:
            records = self.read()
            records[image_id] = time.time() if when is None else when
            self._write(records)

    def expired(self, in_use: set[str], threshold: float, now: float) -> list[str]:
        """The remembered images unused for longer than ``threshold``; images in use are marked used ``now``.
        The expired ones stay remembered until :meth:`forget` (a failed removal is retried next run)."""
        with self._lock:
            records = self.read()
            for image_id in in_use & set(records):
                records[image_id] = now
            self._write(records)
            return sorted(i for i, last in records.items() if i not in in_use and now - last > threshold)

    def forget(self, image_id: str) -> None:
        with self._lock:
            records = self.read()
            if records.pop(image_id, None) is not None:
                self._write(records)


class ImageEngine(Protocol):
    """What the collector needs from the container engine (runtime/engines/moby.py)."""

    async def image_id(self, image: str) -> str | None: ...

    async def images_in_use(self) -> set[str]: ...

    async def remove_image(self, image_id: str) -> bool:
        """True when the image is gone afterwards; False when the engine kept it (a container took it since)."""
        ...


class ImageCollector:
    """Runs the collection on its schedule; ``clock`` (local time) and ``sleep`` are injectable for tests."""

    def __init__(self, engine: ImageEngine, use: ImageUse, settings: ImageGcSettings, agent_image: str | None, *,
                 clock: Callable[[], dt.datetime] = dt.datetime.now,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.engine = engine
        self.use = use
        self.settings = settings
        self.agent_image = agent_image
        self.clock = clock
        self.sleep = sleep
        self.runs = 0

    async def collect_once(self) -> list[str]:
        """One collection now: the ids removed. The agent's image and images any container uses are kept."""
        keep = await self.engine.images_in_use()
        if self.agent_image:
            agent_id = await self.engine.image_id(self.agent_image)
            if agent_id:
                keep.add(agent_id)
        removed = []
        for image_id in self.use.expired(keep, self.settings.threshold, self.clock().timestamp()):
            if await self.engine.remove_image(image_id):  # gone (removed now, or by someone else before)
                removed.append(image_id)
                self.use.forget(image_id)
                log.info("image garbage collection removed %s (unused for longer than %s s)", image_id[:19],
                         int(self.settings.threshold))
        self.runs += 1
        return removed

    async def run(self) -> None:
        """Wait for ``cleanup_time``, collect, then collect every ``cleanup_recurrence`` (aziot-edged's schedule:
        the next run is the recurrence after the cleanup time, so it stays at that time of day)."""
        if not self.settings.enabled:
            return
        await self.sleep(seconds_until(self.settings.cleanup_minute, self.clock()))
        while True:
            try:
                await self.collect_once()
            except Exception as e:  # an engine outage must not end collection for good
                log.warning("image garbage collection failed: %s; next run on schedule", e)
            wait = seconds_until(self.settings.cleanup_minute, self.clock()) + self.settings.recurrence - DAY
            await self.sleep(max(wait, 60.0))
