"""kill -9 during key creation loses nothing: every key whose creation was answered survives with the same public
key, and a half-written key never leaves an unreadable store."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path

import pytest

from edgeward.http.errors import HttpError
from edgeward.keys.client import KeysClient
from edgeward.supervise import start_daemon, stop_daemon

# EDGEWARD_CRASH_KILLS raises the number of kills for a long run (CI runs the default).
ROUNDS = max(8, int(os.environ.get("EDGEWARD_CRASH_KILLS", "8")))

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _create_until_killed(sock: Path, prefix: str, answered: dict[str, str]) -> None:
    client = KeysClient(sock)
    try:
        for i in range(10_000):
            key_id = f"{prefix}-{i}"
            handle = await client.create_key_pair_if_not_exists(key_id, "ec-p256")
            answered[key_id] = await client.get_key_pair_public_parameter(handle, "ec-point")
    except Exception:  # the daemon was killed under us, as intended
        return
    finally:
        await client.close()


async def test_kill_9_during_key_creation_loses_no_answered_key(tmp_path: Path) -> None:
    args = ["run", "--state-dir", str(tmp_path / "state"), "--run-dir", str(tmp_path / "run")]
    sock = tmp_path / "run" / "keyd.sock"
    answered: dict[str, str] = {}
    rng = random.Random(7)
    for round_ in range(ROUNDS):
        proc = start_daemon(args)
        try:
            task = asyncio.create_task(_create_until_killed(sock, f"r{round_}", answered))
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            os.kill(proc.pid, signal.SIGKILL)
            await task
        finally:
            stop_daemon(proc)
    assert len(answered) > 20
    proc = start_daemon(args)
    client = KeysClient(sock)
    try:
        for key_id, point in answered.items():
            handle = await client.load_key_pair(key_id)
            assert await client.get_key_pair_public_parameter(handle, "ec-point") == point
        # ids whose creation was cut short either exist whole or not at all
        for round_ in range(ROUNDS):
            next_id = f"r{round_}-{sum(1 for k in answered if k.startswith(f'r{round_}-'))}"
            try:
                await client.load_key_pair(next_id)
            except HttpError as e:
                assert e.status == 404, e.message
    finally:
        await client.close()
        stop_daemon(proc)
    # temp files torn by the kills were removed at the last start
    assert list((tmp_path / "state" / "keys" / "software" / "keypairs").glob(".*.tmp")) == []
