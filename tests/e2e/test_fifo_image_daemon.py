"""h/brk14b finding 1 against the whole daemon: a host-process module, as its own unprivileged uid, swaps its
executable (in a directory that uid owns) for a FIFO and exits. The module's exit wakes the integrity monitor,
which measured the path on the event loop: open() of the FIFO waited for a writer, and keys, certs, identity,
management and every module's workload API stopped answering, again after every restart. Now the monitor reports
the path as a finding ("not a regular file") and the daemon keeps answering."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import pytest

from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.supervise import start_daemon, stop_daemon
from tests.fixtures.unmeasurable import released_after

pytestmark = [pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.skipif(os.geteuid() != 0, reason="the module runs as a uid of its own")]

MODULE_UID = 4391  # no passwd entry: "uid:gid" names it
SWAPPER = textwrap.dedent("""\
    #!/bin/sh
    sleep 1
    mv "$0" "$0.old" && mkfifo -m 644 "$0"
    exit 0
""")


async def _answers(sock: Path, seconds: float) -> bool:
    mgmt = ManagementClient(sock)
    try:
        async with asyncio.timeout(seconds):
            await mgmt.list_modules()
        return True
    except TimeoutError:
        return False
    finally:
        await mgmt.close()


async def test_a_module_leaving_a_fifo_for_its_executable_freezes_nothing(public_dir: Path) -> None:
    app = public_dir / "app"
    app.mkdir()
    os.chown(app, MODULE_UID, MODULE_UID)
    exe = app / "mod.sh"
    exe.write_text(SWAPPER)
    exe.chmod(0o755)
    os.chown(exe, MODULE_UID, MODULE_UID)
    args = ["run", "--state-dir", str(public_dir / "state"), "--run-dir", str(public_dir / "run")]
    sock = public_dir / "run" / "mgmt" / "mgmt.sock"
    loop = asyncio.get_running_loop()
    logs = [public_dir / "first.log", public_dir / "second.log"]
    for i, log in enumerate(logs):
        # a daemon that blocks is let go by a writer of the FIFO after 20 s, so the test ends (and fails)
        with released_after(exe, 20.0) as released:
            proc = await loop.run_in_executor(None, start_daemon, args, None, 30.0, log)
            try:
                if i == 0:
                    mgmt = ManagementClient(sock)
                    try:
                        await mgmt.create_module({"name": "fifo", "imagePullPolicy": "never", "config": {
                            "settings": {"image": str(exe),
                                         "createOptions": {"User": f"{MODULE_UID}:{MODULE_UID}"}}}})
                        await mgmt.action("fifo", "start")
                    finally:
                        await mgmt.close()
                    async with asyncio.timeout(10):
                        while not exe.is_fifo():  # the module's own doing, then it exits
                            await asyncio.sleep(0.1)
                for _ in range(4):  # the exit woke the monitor (a restart measures at once): it must not hang
                    await asyncio.sleep(0.5)
                    assert await _answers(sock, 5.0), f"the daemon stopped answering ({'first' if i == 0 else 'restarted'})"
                async with asyncio.timeout(10):
                    while "not a regular file" not in log.read_text(errors="replace"):
                        await asyncio.sleep(0.1)
            finally:
                await loop.run_in_executor(None, stop_daemon, proc)
        assert not released, log.read_text(errors="replace")[-3000:]
