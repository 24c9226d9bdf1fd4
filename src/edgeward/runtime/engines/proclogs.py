"""Captured output of host-process modules: one file per stream, one timestamped record per line, size-capped.

Each line of a module's stdout or stderr becomes a record `<RFC 3339 UTC, nanoseconds> <F|P> <bytes>\\n` (the
CRI log layout without the stream name, which the file gives): "F" for a full line, "P" for a piece of a line that
was too long, or the unterminated tail a process left when it died. Timestamps have a fixed width, so files sort
as text, and they strictly increase across both streams of a module, so a follower can tell what it has seen.
A file over its cap is renamed to `<file>.1` (replacing the older one): at most twice the cap per stream.

What a chunk read from a pipe becomes is written with one unbuffered `write` as it arrives (a few thousand lines
at most, between which the event loop runs other work), so the daemon dying loses nothing already read, and the
pipe is read to its end after the process exits, so a crashing process's last lines are kept.

A module's log intake has a fair rate (`Intake`: records and bytes per second, a second's worth of burst). A module
writing faster is not read for a while: its pipe fills and the kernel blocks its writes, so the flood slows the
module that makes it instead of the daemon's event loop, which every caller shares (a module writing empty lines
as fast as it could held the loop half a second per 64 KB read, about 8 us a line, when each line was a record of
its own). The output of a process that has exited is read at once, up to `DRAIN_ALLOWANCE`: what its pipe held.

Reading the last N records (`tail`) reads the files backwards from their end, in blocks: its time and memory are
those of N records, whatever the files' size. Reading them all (`stored`) goes a block at a time, in batches.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import heapq
import itertools
import logging
import os
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...digits import is_number
from ..engine import LogChunk, LogOptions

__all__ = [
    "DRAIN_ALLOWANCE",
    "Intake",
    "LogRecord",
    "LogWriter",
    "ModuleLogs",
    "format_record",
    "format_timestamp",
    "parse_record",
    "parse_timestamp",
    "pump",
    "select",
    "take",
]

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024  # longer lines are split into "P" records rather than buffered without bound
_FOLLOW_QUEUE = 10_000  # a follower further behind than this is ended (it may reconnect) rather than kept in memory
_READ = 65536  # bytes read from a pipe at a time
_SLICE = 2048  # lines made into records and written at once (about 1 ms of the event loop); it runs between slices
RECORDS_PER_SECOND = 20_000  # a module's fair rate of log intake (both streams), and a second's worth of burst
BYTES_PER_SECOND = 4 * 1024 * 1024
DRAIN_ALLOWANCE = 2 * 1024 * 1024  # read at once after the process exits: a pipe's buffer (1 MiB unprivileged) and more
_BLOCK = 65536  # bytes read at a time when reading a log file backwards
_MAX_RECORD = 33 + 2 * MAX_LINE  # a longer line is not a record of ours (a foreign file): skipped, not kept
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


def format_records(first_ns: int, lines: Sequence[bytes], pieces: Sequence[bytes] = ()) -> bytes:
    """`format_record` of each line ("F") then each piece ("P"), stamped first_ns, first_ns + 1, ...: one
    formatting of the second per second crossed, then one C-level formatting a record."""
    out: list[bytes] = []
    ts = first_ns
    for flag, items in ((b"F", lines), (b"P", pieces)):
        done = 0
        while done < len(items):
            seconds, nanos = divmod(ts, 1_000_000_000)
            n = min(len(items) - done, 1_000_000_000 - nanos)
            second = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds)).encode()
            template = second + b"%09dZ " + flag + b" %s\n"
            out.extend(map(template.__mod__, zip(range(nanos, nanos + n), items[done:done + n], strict=True)))
            done += n
            ts += n
    return b"".join(out)


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
        self.write_records(format_record(record))

    def write_records(self, data: bytes) -> None:
        """Whole records, each ending with "\\n": as few writes as the cap allows (a file is rotated before the
        record that would take it over its cap; a record longer than the cap fills a file of its own)."""
        start = 0
        while start < len(data):
            room = self.cap - self._size
            end = len(data) if len(data) - start <= room else data.rfind(b"\n", start, start + max(room, 0)) + 1
            if end <= start:  # not one whole record fits
                if self._size:
                    self._rotate()
                    continue
                end = data.index(b"\n", start) + 1
            view = memoryview(data)[start:end]
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            self._size += end - start
            start = end

    def _rotate(self) -> None:
        os.close(self._fd)
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._fd = self._open()
        self._size = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _last_line_end(fd: int, size: int) -> int:
    """Where the file's last "\\n" ends (0 if none): what follows is a write in progress, or torn by a crash."""
    pos = size
    while pos > 0:
        start = max(0, pos - _BLOCK)
        found = os.pread(fd, pos - start, start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        pos = start
    return 0


def _lines_backwards(fd: int, size: int) -> Iterator[bytes]:
    """The whole lines of a file, last first, without their "\\n", read in blocks from the end. A line longer than
    `_MAX_RECORD` (no record of ours) is never gathered across blocks, so memory stays within a block and a record:
    it is left out, or given whole if a block held it (the caller skips it)."""
    end = _last_line_end(fd, size)
    pos = end - 1  # the "\n" ending the last line is left out: every block ends a line
    carry = b""  # the start of a line whose beginning lies before `pos`
    overlong = False  # the line `carry` belonged to was too long: its rest, before `pos`, is skipped too
    while end:
        start = max(0, pos - _BLOCK)
        parts = (os.pread(fd, pos - start, start) + carry).split(b"\n")
        pos = start
        carry = parts.pop(0) if pos > 0 else b""
        if overlong and parts:
            parts.pop()
            overlong = False
        if len(carry) > _MAX_RECORD:
            carry, overlong = b"", True
        yield from reversed(parts)
        if pos == 0:
            return


def _lines_forward(fd: int, size: int) -> Iterator[bytes]:
    """The whole lines of a file's first `size` bytes, without their "\\n", read in blocks; a line longer than
    `_MAX_RECORD` as in `_lines_backwards`."""
    pos = 0
    carry = b""  # the start of a line that goes on in the next block (at the end: a write in progress, or torn)
    overlong = False  # the line `carry` belonged to was too long: its rest, in the next block, is skipped too
    while pos < size:
        block = os.pread(fd, min(_BLOCK, size - pos), pos)
        if not block:
            return
        pos += len(block)
        parts = (carry + block).split(b"\n")
        carry = parts.pop()
        if overlong and parts:
            parts.pop(0)
            overlong = False
        if len(carry) > _MAX_RECORD:
            carry, overlong = b"", True
        yield from parts


def _open_generations(path: Path) -> list[int]:
    """The stream's file, then its older generation, opened in that order: a rotation in between opens one file
    twice (its records are then skipped once seen), never misses the current one."""
    fds: list[int] = []
    for p in (path, path.with_name(path.name + ".1")):
        with contextlib.suppress(FileNotFoundError):
            fds.append(os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW))
    return fds


def _records(fds: Sequence[int], stream: Stream, backwards: bool) -> Iterator[LogRecord]:
    """The records of a stream's files (`_open_generations`), newest first or oldest first, read in blocks; what
    a rotation meanwhile repeats is skipped (timestamps strictly decrease, or increase, here). The files are read up
    to their size when this starts; what is written after goes to followers."""
    sizes = [os.fstat(fd).st_size for fd in fds]
    last: int | None = None
    order = list(zip(fds, sizes, strict=True))
    for fd, size in order if backwards else reversed(order):
        for line in _lines_backwards(fd, size) if backwards else _lines_forward(fd, size):
            if len(line) > _MAX_RECORD:
                continue
            try:
                record = parse_record(line, stream)
            except ValueError:
                continue
            if last is None or (record.ts_ns < last if backwards else record.ts_ns > last):
                last = record.ts_ns
                yield record


class ModuleLogs:
    """The logs of one module: its two files, and the followers waiting for new records."""

    def __init__(self, directory: Path, cap: int) -> None:
        self.directory = directory
        self.cap = cap
        self._writers: dict[Stream, LogWriter] = {}
        self._last_ts = 0
        self._followers: set[asyncio.Queue[LogRecord | None]] = set()
        self.intake = Intake()  # the module's, across its restarts: a crash loop gets no fresh burst each time

    def path(self, stream: Stream) -> Path:
        return self.directory / ("stdout.log" if stream == 1 else "stderr.log")

    def write(self, stream: Stream, data: bytes, complete: bool) -> None:
        if complete:
            self.write_lines(stream, [data])
        else:
            self.write_lines(stream, [], [data])

    def write_lines(self, stream: Stream, lines: Sequence[bytes], pieces: Sequence[bytes] = ()) -> None:
        """Records of whole lines, then of pieces (over-long, or a dead process's unterminated tail), in one write."""
        count = len(lines) + len(pieces)
        if not count:
            return
        first = max(time.time_ns(), self._last_ts + 1)
        self._last_ts = first + count - 1
        writer = self._writers.get(stream)
        try:
            if writer is None:
                writer = self._writers[stream] = LogWriter(self.path(stream), self.cap)
            writer.write_records(format_records(first, lines, pieces))
        except OSError as e:  # a full disk must not stop the module; the follower still sees the line
            log.warning("cannot write the log of %s: %s", self.directory.name, e)
        if not self._followers:
            return
        records = [LogRecord(first + i, stream, data, True) for i, data in enumerate(lines)]
        records += [LogRecord(first + len(lines) + i, stream, data, False) for i, data in enumerate(pieces)]
        for queue in list(self._followers):
            if queue.qsize() + len(records) >= _FOLLOW_QUEUE:
                self._followers.discard(queue)
                queue.put_nowait(None)
            else:
                for record in records:
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
        return list(self.stored(newest_first=False))

    def stored(self, *, newest_first: bool) -> Generator[LogRecord, None, None]:
        """Every stored record of both streams in time order (or its reverse, read from the files' ends), a block
        of a file at a time (blocking reads: call `next` off the event loop; close it to close the files)."""
        fds = [_open_generations(self.path(1)), _open_generations(self.path(2))]
        try:
            yield from heapq.merge(_records(fds[0], 1, newest_first), _records(fds[1], 2, newest_first),
                                   key=lambda r: (r.ts_ns, r.stream), reverse=newest_first)
        finally:
            for fd in fds[0] + fds[1]:
                os.close(fd)

    def tail(self, options: LogOptions) -> tuple[list[LogRecord], int]:
        """The records `options` select (`select`; its tail is not None), and the newest stored timestamp (0 if
        none), so a follower knows what it has seen. Only the files' ends are read (blocking: off the event loop)."""
        assert options.tail is not None
        since = options.since * 1_000_000_000 if options.since is not None else None
        until = options.until * 1_000_000_000 if options.until is not None else None
        kept: list[LogRecord] = []
        newest = 0
        records = self.stored(newest_first=True)
        try:
            for record in records:
                newest = newest or record.ts_ns
                if len(kept) >= options.tail or (since is not None and record.ts_ns < since):
                    break
                if until is None or record.ts_ns <= until:
                    kept.append(record)
        finally:
            records.close()
        kept.reverse()
        return kept, newest


def take(records: Iterator[LogRecord], count: int = 1000) -> list[LogRecord]:
    """The next `count` records at most (blocking, as reading `stored`: call it off the event loop)."""
    return list(itertools.islice(records, count))


def select(records: list[LogRecord], options: LogOptions) -> Iterator[LogRecord]:
    """Apply since and until (unix seconds; as Docker: nothing before `since`, nothing after `until`), then tail."""
    since = options.since * 1_000_000_000 if options.since is not None else None
    until = options.until * 1_000_000_000 if options.until is not None else None
    kept = [r for r in records if (since is None or r.ts_ns >= since) and (until is None or r.ts_ns <= until)]
    if options.tail is not None:
        kept = kept[-options.tail:] if options.tail > 0 else []
    return iter(kept)


class Intake:
    """A module's fair rate of log intake: a bucket of records and one of bytes, refilled at their rate per second
    up to a second's worth, and spent by what is read; once one is empty, reading waits until it is not."""

    def __init__(self, records_per_second: float = RECORDS_PER_SECOND, bytes_per_second: float = BYTES_PER_SECOND,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rates = (records_per_second, bytes_per_second)
        self._left = [records_per_second, bytes_per_second]
        self._clock = clock
        self._at = clock()

    def spend(self, records: int, nbytes: int) -> float:
        """Take what was read out of the buckets; how long to stop reading (0.0: go on)."""
        now = self._clock()
        elapsed, self._at = now - self._at, now
        wait = 0.0
        for i, used in enumerate((records, nbytes)):
            rate = self._rates[i]
            self._left[i] = min(rate, self._left[i] + elapsed * rate) - used
            wait = max(wait, -self._left[i] / rate)
        return wait


async def pump(reader: asyncio.StreamReader, sink: Callable[[Sequence[bytes], Sequence[bytes]], None],
               intake: Intake | None = None, exited: asyncio.Event | None = None) -> None:
    """Read a pipe to its end, handing `sink` whole lines (without "\\n") and then over-long pieces, a slice of a
    chunk at a time, and letting the event loop run between slices; over its `intake`, stop reading for a while.

    Returning only at end of file is what keeps the last lines of a process that crashed: whatever it wrote is in
    the pipe and is read after it is gone. Once `exited` is set, up to `DRAIN_ALLOWANCE` bytes are read at once.
    """
    pending = b""
    drained = 0
    while True:
        chunk = await reader.read(_READ)
        if not chunk:
            break
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        pieces = []
        while len(pending) >= MAX_LINE:
            pieces.append(pending[:MAX_LINE])
            pending = pending[MAX_LINE:]
        for first in range(0, max(len(lines), 1), _SLICE):
            last = first + _SLICE >= len(lines)
            part = lines[first:first + _SLICE]
            sink(part, pieces if last else ())
            records = len(part) + (len(pieces) if last else 0)
            if exited is not None and exited.is_set() and drained < DRAIN_ALLOWANCE:
                drained += len(chunk) if last else 0
                wait = 0.0
            else:
                wait = intake.spend(records, len(chunk) if last else 0) if intake is not None else 0.0
            await _pause(wait, exited)
    if pending:
        sink((), (pending,))


async def _pause(seconds: float, exited: asyncio.Event | None) -> None:
    """Let the loop run; for `seconds` if over the intake (cut short when the process exits: its pipe is drained)."""
    if seconds <= 0 or exited is None or exited.is_set():
        await asyncio.sleep(max(seconds, 0.0))
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await exited.wait()
