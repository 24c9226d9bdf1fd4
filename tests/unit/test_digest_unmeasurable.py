"""A host module that can write the directory of its executable (or a symlink on its path) puts a FIFO there, or
a symlink to a device, or takes a write lease on the file (h/brk14b finding 1). Every measurement of the executable
(the digest cache's lookup on the event loop, the readings in threads, the pin before a start, the #! check) must
answer at once, with "not a regular file" as a finding, and never open such a path for reading: a FIFO's open
waited for a writer (the whole daemon froze, from the event loop), a device's open acts (/dev/watchdog starts)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeward import digest
from edgeward.attest.measure import measurer_short_of_resources
from edgeward.digest import cached_digest, file_digest, pin_file
from edgeward.runtime.engines import proclaunch
from tests.fixtures.unmeasurable import (
    lease_supported,
    leased,
    make_unmeasurable,
    opened_events,
    released_after,
    within,
)

KINDS = ["fifo", "fifo-symlink", "directory", "socket", "device-symlink"]


def _pin(path: Path) -> str:
    pin = pin_file(path)
    pin.close()
    return pin.digest


READERS: dict[str, Callable[[Path], Any]] = {"cached_digest": cached_digest, "file_digest": file_digest,
                                             "uncached_file_digest": lambda p: file_digest(p, cached=False),
                                             "pin_file": _pin}


def _refused_at_once(read: Callable[[Path], Any], path: Path) -> BaseException:
    fifo = path.resolve() if path.is_symlink() else path
    with released_after(fifo, 3.0) as released:
        started = time.monotonic()
        done, raised = within(5.0, lambda: read(path))
        took = time.monotonic() - started
    assert done and not released, f"the measurement blocked on {path} (let go by a writer after {took:.1f} s)"
    assert took < 1.0, took
    assert raised is not None, "measured something that is not a regular file"
    return raised


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("kind", KINDS)
def test_what_is_not_a_regular_file_is_a_finding_at_once(tmp_path: Path, reader: str, kind: str) -> None:
    path = tmp_path / "module"
    keep = make_unmeasurable(path, kind)
    try:
        raised = _refused_at_once(READERS[reader], path)
    finally:
        for k in keep:
            k.close()
    assert isinstance(raised, OSError) and "not a regular file" in str(raised), repr(raised)
    assert not measurer_short_of_resources(raised)  # the module's doing: a finding, never "retry later"


@pytest.mark.parametrize("reader", READERS)
def test_a_fifo_is_never_opened(tmp_path: Path, reader: str) -> None:
    """Not even without blocking (O_NONBLOCK): an open is what a device acts on, and a FIFO's reader is what its
    writer waits for. inotify's IN_OPEN shows any open; resolving the path (O_PATH) raises none."""
    path = tmp_path / "module"
    os.mkfifo(path)
    with opened_events(path) as opens:
        _refused_at_once(READERS[reader], path)
        assert opens() == 0


def test_the_shebang_check_does_not_block_on_a_fifo(tmp_path: Path) -> None:
    path = tmp_path / "module"
    os.mkfifo(path)
    with opened_events(path) as opens, released_after(path, 3.0) as released:
        done, raised = within(5.0, lambda: proclaunch._interpreter(str(path)))
        assert opens() == 0
    assert done and not released and raised is None
    script = tmp_path / "script"
    script.write_bytes(b"#!/bin/sh -e\nexit 0\n")
    assert proclaunch._interpreter(str(script)) == "/bin/sh"


@pytest.mark.parametrize("reader", [*READERS, "interpreter"])
def test_a_write_lease_on_the_file_does_not_hold_the_measurement(tmp_path: Path, reader: str) -> None:
    """A file's owner can take a write lease on it and ignore the kernel's request to let go: an open for reading
    then waits lease-break-time (45 s by default), every time. Measured without waiting, it is a finding."""
    if not lease_supported(tmp_path):
        pytest.skip("no leases on this file system")
    path = tmp_path / "module"
    path.write_bytes(b"#!/bin/sh\nexit 0\n")
    read: Callable[[Path], Any] = (lambda p: proclaunch._interpreter(str(p))) if reader == "interpreter" \
        else READERS[reader]
    with leased(path):
        started = time.monotonic()
        done, raised = within(3.0, lambda: read(path))
        took = time.monotonic() - started
    assert done, "the measurement waited for the lease's holder"
    assert took < 1.0, took
    if reader != "interpreter":
        assert isinstance(raised, OSError) and "lease" in str(raised), repr(raised)
        assert not measurer_short_of_resources(raised)


def test_regular_files_measure_as_before_through_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "v1" / "module"
    target.parent.mkdir()
    target.write_bytes(b"code " * 1000)
    link = tmp_path / "current"
    link.symlink_to("v1")
    expected = file_digest(target, cached=False)
    assert file_digest(link / "module", cached=False) == expected == _pin(link / "module")
    assert cached_digest(link / "module") in (None, expected)


def test_without_proc_a_regular_file_still_measures_and_a_fifo_is_still_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc is where the resolved file is opened from; a system without it measures by path (a FIFO or device
    is still never opened: the path is checked first, and the descriptor after)."""
    monkeypatch.setattr(digest, "_PROC_FD", str(tmp_path / "no-proc"), raising=False)
    target = tmp_path / "module"
    target.write_bytes(b"code")
    assert file_digest(target, cached=False).startswith("sha256:")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    raised = _refused_at_once(file_digest, fifo)
    assert "not a regular file" in str(raised)
