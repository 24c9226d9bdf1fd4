"""Durable file changes in bursts: callers stage a write or a removal and await it; one flush at a time applies
every staged change (the last one per path wins), fsyncs each file and each directory once, and answers everyone.

A caller still never hears "done" before its change is on disk, but a burst of requests costs one flush rather than
one flush each, and the flush runs off the event loop. Staged content is visible at once to readers in this process
(read-your-writes), so a lock held only while staging still orders writers of one path: the next writer reads what
the previous one staged, and the single flusher applies the changes in staging order."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from .fsutil import atomic_write, fsync_dir

__all__ = ["GroupCommit"]


@dataclass
class _Change:
    data: bytes | None  # None: remove the file
    mode: int
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class GroupCommit:
    def __init__(self) -> None:
        self._pending: dict[Path, _Change] = {}
        self._inflight: dict[Path, _Change] = {}
        self._flusher: asyncio.Task[None] | None = None

    def stage(self, path: Path, data: bytes | None, mode: int = 0o600) -> asyncio.Future[None]:
        """Stage ``data`` for ``path`` (None removes it); the future completes once the change is durable, or
        carries the OSError that kept it off the disk."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        prior = self._pending.get(path)
        change = _Change(data, mode, prior.waiters if prior is not None else [])
        change.waiters.append(done)
        self._pending[path] = change
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="edgeward-group-commit")
        return done

    def staged(self, path: Path) -> tuple[bool, bytes | None]:
        """(True, content) when a change to ``path`` is staged or being flushed (content None: removed)."""
        for changes in (self._pending, self._inflight):
            change = changes.get(path)
            if change is not None:
                return True, change.data
        return False, None

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, {}
            self._inflight = batch
            failed: dict[Path, Exception]
            try:
                failed = await loop.run_in_executor(None, _apply, {p: (c.data, c.mode) for p, c in batch.items()})
            except asyncio.CancelledError:  # stopping: nobody is told "durable" who was not
                for change in batch.values():
                    _settle(change.waiters, OSError("stopped before the change was known to be on disk"))
                raise
            except Exception as e:
                failed = dict.fromkeys(batch, e)
            finally:
                self._inflight = {}
            for path, change in batch.items():
                _settle(change.waiters, failed.get(path))


def _settle(waiters: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for w in waiters:
        if w.done():
            continue
        if error is None:
            w.set_result(None)
        else:
            w.set_exception(error)


def _apply(changes: dict[Path, tuple[bytes | None, int]]) -> dict[Path, Exception]:
    """Each file written and fsynced (or removed), then each directory fsynced once; the paths that failed."""
    failed: dict[Path, Exception] = {}
    by_dir: dict[Path, list[Path]] = {}
    for path, (data, mode) in changes.items():
        try:
            if data is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write(path, data, mode=mode, sync_dir=False)
        except OSError as e:
            failed[path] = e
            continue
        by_dir.setdefault(path.parent, []).append(path)
    for directory, paths in by_dir.items():
        try:
            fsync_dir(directory)
        except OSError as e:
            failed.update(dict.fromkeys(paths, e))
    return failed
