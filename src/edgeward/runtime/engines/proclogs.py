"""Captured output of host-process modules: one file per stream, one timestamped record per line, size-capped.

Each line of a module's stdout or stderr becomes a record `<RFC 3339 UTC, nanoseconds> <F|P> <bytes>\\n` (the
CRI log layout without the stream name, which the file gives): "F" for a full line, "P" for a piece of a line that
was too long, or the unterminated tail a process left when it died. Timestamps have a fixed width, so files sort
as text, and they strictly increase across both streams of a module, so a follower can tell what it has seen.
A file over its cap is renamed to `<file>.1` (replacing the older one): at most twice the cap per stream.

Records are written with one unbuffered `write` each as they arrive, so the daemon dying loses nothing already
read, and the pipe is read to its end after the process exits, so a crashing process's last lines are kept.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import heapq
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...digits import is_number
from ..engine import LogChunk, LogOptions

__all__ = [
    "LogRecord",
    "LogWriter",
    "ModuleLogs",
    "format_record",
    "format_timestamp",
    "parse_record",
    "parse_timestamp",
    "pump",
    "select",
]

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024  # longer lines are split into "P" records rather than buffered without bound
_FOLLOW_QUEUE = 10_000  # a follower further behind than this is ended (it may reconnect) rather than kept in memory
Stream = Literal[1, 2]


@dataclass(frozen=True)
class LogRecord:
    ts_ns: int
    stream: Stream
    data: bytes  # without the line end
    complete: bool  # the line ended with "\n"

    def chunk(self, timestamps: bool) -> LogChunk:
        prefix = format_timestamp(self.ts_ns).encode() + b" " if timestamps else b""
        return LogChunk(self.stream, prefix + self.data + (b"\n" if self.complete else b""))


def format_timestamp(ts_ns: int) -> str:
    """RFC 3339 in UTC with nanoseconds, always 30 characters (so text order is time order)."""
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def parse_timestamp(text: str) -> int:
    """Inverse of format_timestamp; ValueError on anything else."""
    if len(text) != 30 or text[19] != "." or text[29] != "Z" or not is_number(text[20:29]):
        raise ValueError(f"not a log timestamp: {text!r}")
    seconds = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1_000_000_000 + int(text[20:29])


def format_record(record: LogRecord) -> bytes:
    if b"\n" in record.data:
        raise ValueError("a log record holds one line")
    flag = b"F" if record.complete else b"P"
    return format_timestamp(record.ts_ns).encode() + b" " + flag + b" " + record.data + b"\n"


def parse_record(line: bytes, stream: Stream) -> LogRecord:
    """One line of a log file, without its "\\n"; ValueError if it is not a record (a torn write, a foreign file)."""
    if len(line) < 32 or line[30:31] != b" " or line[31:32] not in (b"F", b"P") or line[32:33] not in (b" ", b""):
        raise ValueError("not a log record")
    ts = parse_timestamp(line[:30].decode("ascii"))
    return LogRecord(ts, stream, line[33:], line[31:32] == b"F")


class LogWriter:
    """Appends records to one stream's file and rotates it at `cap` bytes."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = cap
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)

    def write(self, record: LogRecord) -> None:
        data = format_record(record)
        if self._size and self._size + len(data) > self.cap:
            self._rotate()
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._size += len(data)

    def _rotate(self) -> None:
        os.close(self._fd)
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._fd = self._open()
        self._size = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _read_stream(path: Path, stream: Stream) -> list[LogRecord]:
    out: list[LogRecord] = []
    for p in (path.with_name(path.name + ".1"), path):
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            continue
        lines = raw.split(b"\n")
        for line in lines[:-1]:  # the last element is an unterminated write in progress (or b"")
            with contextlib.suppress(ValueError):
                out.append(parse_record(line, stream))
    return out


class ModuleLogs:
    """The logs of one module: its two files, and the followers waiting for new records."""

    def __init__(self, directory: Path, cap: int) -> None:
        self.directory = directory
        self.cap = cap
        self._writers: dict[Stream, LogWriter] = {}
        self._last_ts = 0
        self._followers: set[asyncio.Queue[LogRecord | None]] = set()

    def path(self, stream: Stream) -> Path:
        return self.directory / ("stdout.log" if stream == 1 else "stderr.log")

    def write(self, stream: Stream, data: bytes, complete: bool) -> None:
        self._last_ts = max(time.time_ns(), self._last_ts + 1)
        record = LogRecord(self._last_ts, stream, data, complete)
        writer = self._writers.get(stream)
        if writer is None:
            writer = self._writers[stream] = LogWriter(self.path(stream), self.cap)
        try:
            writer.write(record)
        except OSError as e:  # a full disk must not stop the module; the follower still sees the line
            log.warning("cannot write the log of %s: %s", self.directory.name, e)
        for queue in list(self._followers):
            if queue.qsize() >= _FOLLOW_QUEUE - 1:
                self._followers.discard(queue)
                queue.put_nowait(None)
            else:
                queue.put_nowait(record)

    def subscribe(self) -> asyncio.Queue[LogRecord | None]:
        queue: asyncio.Queue[LogRecord | None] = asyncio.Queue(_FOLLOW_QUEUE)
        self._followers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[LogRecord | None]) -> None:
        self._followers.discard(queue)

    def end_followers(self) -> None:
        """The process is gone: every follow ends once it has what was written so far."""
        for queue in self._followers:
            queue.put_nowait(None)
        self._followers.clear()

    def close(self) -> None:
        self.end_followers()
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def history(self) -> list[LogRecord]:
        """Every stored record of both streams in time order (blocking file reads: call it off the event loop)."""
        return list(heapq.merge(_read_stream(self.path(1), 1), _read_stream(self.path(2), 2),
                                key=lambda r: (r.ts_ns, r.stream)))


def select(records: list[LogRecord], options: LogOptions) -> Iterator[LogRecord]:
    """Apply since and until (unix seconds; as Docker: nothing before `since`, nothing after `until`), then tail."""
    since = options.since * 1_000_000_000 if options.since is not None else None
    until = options.until * 1_000_000_000 if options.until is not None else None
    kept = [r for r in records if (since is None or r.ts_ns >= since) and (until is None or r.ts_ns <= until)]
    if options.tail is not None:
        kept = kept[-options.tail:] if options.tail > 0 else []
    return iter(kept)


async def pump(reader: asyncio.StreamReader, sink: Callable[[bytes, bool], None]) -> None:
    """Read a pipe to its end, handing `sink` each line (without "\\n", complete) or over-long piece (incomplete).

    Returning only at end of file is what keeps the last lines of a process that crashed: whatever it wrote is in
    the pipe and is read after it is gone.
    """
    pending = b""
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        for line in lines:
            sink(line, True)
        while len(pending) >= MAX_LINE:
            sink(pending[:MAX_LINE], False)
            pending = pending[MAX_LINE:]
    if pending:
        sink(pending, False)
