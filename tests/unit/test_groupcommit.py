"""Group commit: every caller hears "done" only once its change is on disk, a burst shares flushes, readers in
the process see staged content, the last change to a path wins, and a failed flush reaches every caller."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgeward import groupcommit
from edgeward.groupcommit import GroupCommit
from tests.fixtures.flushes import count_flushes

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_burst_shares_flushes_and_the_last_change_wins(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    flushes = count_flushes(monkeypatch)
    commits = GroupCommit()
    same = tmp_path / "same"
    waits = [commits.stage(same, f"v{i}".encode(), 0o644) for i in range(50)]
    waits += [commits.stage(tmp_path / f"f{i}", b"x") for i in range(20)]
    assert commits.staged(same) == (True, b"v49")  # read-your-writes before anything is on disk
    assert not same.exists()
    await asyncio.gather(*waits)
    assert same.read_bytes() == b"v49" and all((tmp_path / f"f{i}").read_bytes() == b"x" for i in range(20))
    assert (same.stat().st_mode & 0o777) == 0o644 and ((tmp_path / "f0").stat().st_mode & 0o777) == 0o600
    assert flushes == [21]  # 70 changes, one flush: 50 to one path collapse to the last
    assert commits.staged(same) == (False, None)
    assert not list(tmp_path.glob(".*.tmp"))


async def test_changes_staged_during_a_flush_go_in_the_next_one_in_order(tmp_path: Path) -> None:
    commits = GroupCommit()
    path = tmp_path / "f"
    first = commits.stage(path, b"one")
    await asyncio.sleep(0)  # the flusher has taken "one"
    second = commits.stage(path, b"two")
    removed = commits.stage(path, None)
    assert commits.staged(path) == (True, None)
    await asyncio.gather(first, second, removed)
    assert not path.exists()
    again = commits.stage(path, b"three")
    await again
    assert path.read_bytes() == b"three"


async def test_a_failed_write_reaches_its_callers_and_only_them(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    bad, good = tmp_path / "bad", tmp_path / "good"
    bad.write_bytes(b"old")
    real = groupcommit.atomic_write

    def failing(path: Path, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None,
                sync_dir: bool = True) -> None:
        if path == bad:
            raise OSError(28, "No space left on device")
        real(path, data, mode=mode, owner=owner, sync_dir=sync_dir)

    monkeypatch.setattr(groupcommit, "atomic_write", failing)
    commits = GroupCommit()
    lost, kept = commits.stage(bad, b"new"), commits.stage(good, b"new")
    results = await asyncio.gather(lost, kept, return_exceptions=True)
    assert isinstance(results[0], OSError) and results[0].errno == 28 and results[1] is None
    assert commits.staged(bad) == (False, None) and bad.read_bytes() == b"old"  # nothing claims the lost write
    assert good.read_bytes() == b"new"
