"""The integrity monitor when the daemon is out of file descriptors (break-this review, A2): a flood of bare TCP
connections filled the daemon's 1024 descriptors, the monitor could not open a module's executable (EMFILE), and
recorded that as `integrity.binary_changed`, which went into PCR 10 and got the device revoked by its verifier.

Here the daemon's descriptors are used up by lowering its RLIMIT_NOFILE to what it holds: no connection flood
needed to bring about the same EMFILE. A measurement that fails for the measurer's own lack of resources is a
retryable error, recorded as such, never a finding; a binary that is gone or unreadable still is one."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgeward.attest.measure import measure, measurer_short_of_resources
from edgeward.runtime.engines.process import ProcessEngine
from edgeward.runtime.mgmt_client import ManagementClient
from tests.fixtures.modules import client_spec, module_results
from tests.fixtures.runtime import RuntimeEnv, serve_runtime

SYSTEM_PYTHON = str(Path("/usr/bin/python3").resolve())  # other uids can run it


@pytest.fixture
async def rt(request: pytest.FixtureRequest, public_dir: Path) -> AsyncIterator[RuntimeEnv]:
    engine = ProcessEngine(public_dir / "state" / "runtime" / "processes", stop_timeout=2.0, backoff_base=0.05,
                           backoff_cap=0.5, allow_elevated=True)  # its modules run as root
    doc = {"hostname": "edge1", "edgeward": {"integrity": {"period_seconds": 3600}}}  # passes: by hand
    async with serve_runtime(request, public_dir, engine, doc) as env:
        yield env


@contextmanager
def descriptors_used_up() -> Iterator[None]:
    """Every descriptor this process may open is open: the next open() fails with EMFILE, as under the flood."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd.name) for fd in Path("/proc/self/fd").iterdir())
    held: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
    try:
        while True:  # fill the gaps below the limit too: an fd is always the lowest free number
            try:
                held.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                break
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _started_module(rt: RuntimeEnv, mgmt: ManagementClient, name: str) -> Path:
    script = rt.base / "bin" / f"{name}.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"#!{SYSTEM_PYTHON}\nimport time\nprint('WAITING', flush=True)\ntime.sleep(3600)\n")
    script.chmod(0o755)
    await mgmt.create_module(client_spec(name, [], image=str(script), go_file=str(rt.base / f"go-{name}")))
    await mgmt.action(name, "start")
    await module_results(rt.parts.engine, name, until=b"WAITING")
    assert await rt.parts.monitor.check() == []
    return script


def _kinds(rt: RuntimeEnv) -> list[str]:
    return [r.kind for r in rt.parts.audit.records()]


async def test_out_of_descriptors_is_the_monitors_own_error_never_a_changed_binary(
        rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    await _started_module(rt, mgmt, "sensor")
    reg = rt.parts.registry.get("sensor")
    assert reg is not None
    with descriptors_used_up():
        result = await measure(rt.parts.engine, reg)
        assert (result.ok, result.kind) == (False, None), result  # was (False, "binary_changed"): forged
        assert result.retryable
        findings = await rt.parts.monitor.check()
    assert "Too many open files" in (result.finding or "")
    assert findings == []
    assert "integrity.binary_changed" not in _kinds(rt)
    health = rt.parts.monitor.health()
    assert list(health.unmeasured) == ["sensor"] and "Too many open files" in health.unmeasured["sensor"].error

    # Descriptors back: measured again, and the monitor's failure is on the record (under the flood it may not
    # have been able to write it: the audit log needs descriptors too).
    assert await rt.parts.monitor.check() == []
    assert rt.parts.monitor.health().unmeasured == {}
    last = rt.parts.audit.records()[-1]
    assert (last.kind, last.module, last.detail["attempts"]) == ("integrity.monitor_recovered", "sensor", 1)
    assert "Too many open files" in last.detail["error"]
    assert "integrity.binary_changed" not in _kinds(rt)


async def test_the_monitor_retries_soon_on_its_own_not_at_its_period(rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    """The period here is an hour; a pass that could not measure is retried within a second or two."""
    await _started_module(rt, mgmt, "sensor")
    monitor = rt.parts.monitor
    passes = monitor.passes
    with descriptors_used_up():
        monitor.wake()
        async with asyncio.timeout(10):
            while monitor.passes == passes:
                await asyncio.sleep(0.01)
    assert "sensor" in monitor.health().unmeasured
    async with asyncio.timeout(10):  # no wake, no event: the monitor's own retry
        while monitor.health().unmeasured:
            await asyncio.sleep(0.05)
    assert _kinds(rt)[-1] == "integrity.monitor_recovered"
    assert "integrity.binary_changed" not in _kinds(rt)


async def test_a_finding_is_not_cleared_by_a_pass_that_could_not_measure(
        rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    script = await _started_module(rt, mgmt, "sensor")
    script.unlink()  # gone: that is a finding, and an unmeasurable pass later must not clear it
    assert [(f.kind, f.module) for f in await rt.parts.monitor.check()] == [("binary_changed", "sensor")]
    with descriptors_used_up():
        assert [(f.kind, f.module) for f in await rt.parts.monitor.check()] == [("binary_changed", "sensor")]
    assert "integrity.cleared" not in _kinds(rt)


async def test_a_binary_swapped_for_one_that_cannot_be_opened_is_still_a_finding(
        rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    """A module that swaps its executable for something the daemon cannot open must not hide behind "cannot
    measure": only a shortage of the measurer's own resources is retryable."""
    script = await _started_module(rt, mgmt, "sensor")
    script.unlink()
    script.symlink_to(script.name)  # a loop: ELOOP, for root too
    assert [(f.kind, f.module) for f in await rt.parts.monitor.check()] == [("binary_changed", "sensor")]


@pytest.mark.parametrize(("code", "retryable"), [
    (errno.EMFILE, True), (errno.ENFILE, True), (errno.ENOMEM, True), (errno.EIO, True), (errno.EINTR, True),
    (errno.EAGAIN, True),
    # The file itself: gone, or kept from the measurer. EACCES/EPERM are findings: for a root daemon they come from
    # the file's attributes or an LSM rule someone changed, not from any load an unprivileged user can put on it;
    # for a daemon that is not root, a module owning its executable could chmod it unreadable and rewrite it.
    (errno.ENOENT, False), (errno.EACCES, False), (errno.EPERM, False), (errno.ELOOP, False),
    (errno.ENOTDIR, False), (errno.ESTALE, False),
])
def test_which_errors_are_the_measurers_own(code: int, retryable: bool) -> None:
    assert measurer_short_of_resources(OSError(code, os.strerror(code))) is retryable
