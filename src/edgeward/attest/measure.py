"""Measurements: what a module's code is now, to compare with what was registered when it was created.

Shared by attestation (on every new connection) and the integrity monitor (on a timer and on engine events).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..runtime.engine import ModuleEngine, ModuleNotFound
from ..runtime.registry import Registration

__all__ = ["MAX_EXECUTABLE_BYTES", "Measurement", "file_digest", "measure"]

MAX_EXECUTABLE_BYTES = 512 * 1024 * 1024
_digests: dict[tuple[int, int, int, int], str] = {}


class TooLarge(Exception):
    pass


def file_digest(path: Path | str, cap: int = MAX_EXECUTABLE_BYTES) -> str:
    """"sha256:<hex>" of a file, cached by (device, inode, size, mtime) so re-measuring an unchanged binary is a
    stat, not a read. A file over `cap` is refused rather than hashed for minutes."""
    st = Path(path).stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _digests.get(key)
    if cached is not None:
        return cached
    if st.st_size > cap:
        raise TooLarge(f"{path} is {st.st_size} bytes, over the measurement cap of {cap}")
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = "sha256:" + h.hexdigest()
    if len(_digests) > 4096:
        _digests.clear()
    _digests[key] = digest
    return digest


@dataclass(frozen=True)
class Measurement:
    ok: bool
    finding: str | None = None  # why not, in words a log reader understands
    kind: str | None = None  # "image_swapped", "binary_changed", "engine_object_replaced", "gone"


async def measure(engine: ModuleEngine, reg: Registration) -> Measurement:
    """Does the module's engine object and code still match its registration?"""
    try:
        status = await engine.inspect(reg.name)
    except ModuleNotFound:
        return Measurement(False, f"module {reg.name} has no {reg.engine} object any more", "gone")
    if status.engine_id != reg.engine_id:
        return Measurement(False, f"module {reg.name} is served by {status.engine_id[:12]}, not the registered "
                                  f"{reg.engine_id[:12]}", "engine_object_replaced")
    if reg.engine == "process":
        try:
            now = file_digest(reg.image)
        except (OSError, TooLarge) as e:
            return Measurement(False, f"module {reg.name}: cannot measure {reg.image}: {e}", "binary_changed")
        if now != reg.image_id:
            return Measurement(False, f"module {reg.name}: {reg.image} is {now[:19]}, registered {reg.image_id[:19]}",
                               "binary_changed")
        return Measurement(True)
    if status.image_id != reg.image_id:
        return Measurement(False, f"module {reg.name} runs image {status.image_id[:19]}, registered "
                                  f"{reg.image_id[:19]}", "image_swapped")
    return Measurement(True)

