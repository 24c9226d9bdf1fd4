"""Measurements: what a module's code is now, to compare with what was registered when it was created.

Shared by attestation (on every new connection) and the integrity monitor (on a timer and on engine events).

A host-process module is measured twice over: its executable file now (through the digest cache, which a writer
that is not root cannot fool), and what the engine measured from the file's bytes just before it started the
running process (kept open since, so a later write to it shows). The second catches a module started on changed
code whose file was put back since; both must equal the registration.

What counts as a finding: only what says the code is not what was registered: the file is gone, unopenable for a
reason of its own (EACCES, EPERM, ELOOP, ...), not a regular file (a FIFO, device, ...: never opened, see
`digest.open_regular`), too large, kept changing while read, or hashes to another digest. A
measurement that failed because the measurer itself is short of something (descriptors, memory, kernel buffers) or
the read was interrupted or hit an I/O error is the measurer's failure, not the module's: the measurement is
`retryable`, never a finding. Anyone on the device can exhaust the daemon's descriptors (a flood of bare TCP
connections did, in the break-this review), so treating EMFILE as "binary changed" let any local user forge a
finding, which the Keylime agent reports and the verifier revokes the device for.

EACCES and EPERM stay findings: for a root daemon they come from the file's attributes or an LSM rule that someone
changed, never from load an unprivileged user can put on the daemon; for a daemon that is not root, a module owning
its executable could chmod it unreadable and then rewrite it, and "retry" would hide that for ever.
"""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..digest import MAX_EXECUTABLE_BYTES, ChangedWhileRead, TooLarge, Unmeasurable, cached_digest, file_digest
from ..runtime.engine import ModuleEngine, ModuleNotFound
from ..runtime.registry import Registration

__all__ = ["MAX_EXECUTABLE_BYTES", "Measurement", "file_digest", "measure", "measurer_short_of_resources"]

# The measurer's own trouble: out of descriptors (process or system), memory or buffers, an interrupted or would-block
# call, a busy or timed-out device, an I/O error. Every other errno is about the file (see the module docstring).
_OWN_FAILURES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.EINTR, errno.EAGAIN,
                           errno.EWOULDBLOCK, errno.EBUSY, errno.ETIMEDOUT, errno.EIO})


@runtime_checkable
class LaunchMeasured(Protocol):
    """An engine that measures a module's code when it starts it (the process engine)."""

    async def launch_finding(self, name: str, registered: str) -> str | None: ...


@dataclass(frozen=True)
class Measurement:
    ok: bool
    finding: str | None = None  # why not, in words a log reader understands
    kind: str | None = None  # "image_swapped", "binary_changed", "engine_object_replaced", "gone"
    retryable: bool = False  # not measured, for a reason of the measurer's own: no finding, measure again later


def measurer_short_of_resources(e: BaseException) -> bool:
    """Did a measurement fail for the measurer's own lack of resources (retry), rather than for the file (a
    finding)?"""
    if isinstance(e, MemoryError):
        return True
    return isinstance(e, OSError) and not isinstance(e, ChangedWhileRead) and e.errno in _OWN_FAILURES


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
        problem = await engine.launch_finding(reg.name, reg.image_id) if isinstance(engine, LaunchMeasured) \
            else None
        if problem is not None:
            return Measurement(False, f"module {reg.name}: {problem}", "binary_changed")
        try:
            # A cache hit is an fstat (and an open that cannot wait); a read goes to a thread, off the event loop.
            now = cached_digest(reg.image)
            if now is None:
                now = await asyncio.to_thread(file_digest, reg.image)
        except Unmeasurable as e:
            return Measurement(False, f"module {reg.name}: {e}", "binary_changed")
        except (OSError, MemoryError, TooLarge) as e:
            if measurer_short_of_resources(e):
                return Measurement(False, f"module {reg.name}: {reg.image} not measured, retrying: {e}",
                                   retryable=True)
            return Measurement(False, f"module {reg.name}: cannot measure {reg.image}: {e}", "binary_changed")
        if now != reg.image_id:
            return Measurement(False, f"module {reg.name}: {reg.image} is {now[:19]}, registered {reg.image_id[:19]}",
                               "binary_changed")
        return Measurement(True)
    if status.image_id != reg.image_id:
        return Measurement(False, f"module {reg.name} runs image {status.image_id[:19]}, registered "
                                  f"{reg.image_id[:19]}", "image_swapped")
    return Measurement(True)

