"""The state directory fills up: requests that must write get a clear 507 (never a 500 or a hang), reads keep
working, and everything recovers once space is freed. A real tmpfs of a few MB stands in for a full disk."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeward.http.errors import HttpError
from edgeward.keys.client import KeysClient
from edgeward.supervise import start_daemon, stop_daemon

pytestmark = [pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.skipif(os.getuid() != 0, reason="mounting a tmpfs needs root")]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "state"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)  # unbuffered, down to the last page
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


async def test_full_state_disk_is_a_clear_507_and_recovers(small_disk: Path, tmp_path: Path) -> None:
    args = ["run", "--state-dir", str(small_disk), "--run-dir", str(tmp_path / "run")]
    loop = asyncio.get_running_loop()
    proc = await loop.run_in_executor(None, lambda: start_daemon(args, log_path=tmp_path / "daemon.log"))
    client = KeysClient(tmp_path / "run" / "keyd.sock")
    try:
        before = await client.create_key_pair_if_not_exists("before-full", "ec-p256")
        filler = _fill(small_disk)
        with pytest.raises(HttpError) as full:
            for i in range(50):  # the first write that does not fit
                await client.create_key_pair_if_not_exists(f"while-full-{i}", "ec-p256")
        assert full.value.status == 507 and "no space left" in full.value.message
        assert await client.load_key_pair("before-full")  # reads still work
        assert (await client.get_key_pair_public_parameter(before, "algorithm")) == "ECDSA"
        filler.unlink()
        again = await client.create_key_pair_if_not_exists("after-freeing", "ec-p256")
        assert again
    finally:
        await client.close()
        await loop.run_in_executor(None, stop_daemon, proc)
    log = (tmp_path / "daemon.log").read_text()
    assert "no space left" in log and "Traceback" not in log  # one clear line, no stack dump
