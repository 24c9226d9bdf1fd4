"""SQLite the way every Edgeward store uses it: WAL, synchronous=FULL (a row is on disk before the answer), one
connection shared by the event loop and executor threads, writes in IMMEDIATE transactions."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Store"]


class Store:
    def __init__(self, path: Path, *schema: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        for statement in schema:
            self.db.execute(statement)
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; the caller holds `lock` (for work that must follow the commit under it)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        with self.lock, self.transaction() as db:
            yield db

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            yield self.db

    def close(self) -> None:
        with self.lock:
            self.db.close()
