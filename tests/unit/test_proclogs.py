"""Host-process log intake in batches, its fair rate, and tails read backwards from the files' ends."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeward.runtime.engine import LogOptions
from edgeward.runtime.engines import proclogs
from edgeward.runtime.engines.proclogs import (
    MAX_LINE,
    Intake,
    LogRecord,
    LogWriter,
    ModuleLogs,
    format_record,
    format_records,
    parse_record,
    pump,
    select,
)

S = 10**9
line_bytes = st.binary(max_size=40).filter(lambda b: b"\n" not in b)


@given(first=st.integers(0, 2**40 * S), lines=st.lists(line_bytes, max_size=20),
       pieces=st.lists(line_bytes, max_size=3), near=st.integers(0, 25))
def test_a_batch_is_the_records_of_its_lines_one_at_a_time(first: int, lines: list[bytes], pieces: list[bytes],
                                                           near: int) -> None:
    first = first // S * S + S - near  # often crossing a second within the batch
    expected = [format_record(LogRecord(first + i, 1, data, True)) for i, data in enumerate(lines)]
    expected += [format_record(LogRecord(first + len(lines) + i, 1, data, False)) for i, data in enumerate(pieces)]
    assert format_records(first, lines, pieces) == b"".join(expected)


@settings(max_examples=40)
@given(batches=st.lists(st.tuples(st.sampled_from([1, 2]), st.lists(line_bytes, max_size=30)), max_size=12))
def test_batches_rotate_at_record_boundaries_within_the_cap(tmp_path_factory: pytest.TempPathFactory,
                                                            batches: list[tuple[int, list[bytes]]]) -> None:
    directory = tmp_path_factory.mktemp("logs")
    logs = ModuleLogs(directory, cap=300)
    written: dict[int, list[bytes]] = {1: [], 2: []}
    for stream, lines in batches:
        logs.write_lines(stream, lines)  # type: ignore[arg-type]
        written[stream] += lines
    logs.close()
    for file in directory.iterdir():
        assert file.stat().st_size <= 300, file.name
        assert file.read_bytes().endswith(b"\n") or not file.stat().st_size
    kept = logs.history()
    for stream in (1, 2):
        mine = [r.data for r in kept if r.stream == stream]
        assert mine == written[stream][len(written[stream]) - len(mine):]  # the newest, none lost in between
        if written[stream]:
            assert mine, "the newest generation is kept"


def test_a_record_longer_than_the_cap_fills_a_file_alone(tmp_path: Path) -> None:
    writer = LogWriter(tmp_path / "stdout.log", cap=100)
    writer.write_records(format_records(S, [b"a", b"b" * 200, b"c"]))
    writer.close()
    assert (tmp_path / "stdout.log.1").read_bytes().endswith(b" F " + b"b" * 200 + b"\n")
    assert (tmp_path / "stdout.log").read_bytes().endswith(b" F c\n")


def whole_files(directory: Path) -> list[LogRecord]:
    """The records of both streams as the files hold them, each file read whole: what reading in blocks must give."""
    streams: list[list[LogRecord]] = [[], []]
    for stream, name in ((1, "stdout.log"), (2, "stderr.log")):
        for path in (directory / (name + ".1"), directory / name):
            if path.exists():
                for line in path.read_bytes().split(b"\n")[:-1]:  # the last: a write in progress (or b"")
                    if len(line) <= proclogs._MAX_RECORD:
                        with contextlib.suppress(ValueError):
                            streams[stream - 1].append(parse_record(line, stream))  # type: ignore[arg-type]
    return list(heapq.merge(*streams, key=lambda r: (r.ts_ns, r.stream)))


records_spec = st.lists(st.tuples(st.sampled_from([1, 2]), st.integers(1, 3), line_bytes), max_size=60)


@settings(max_examples=80, deadline=None)
@given(spec=records_spec, tail=st.none() | st.integers(0, 70), since=st.none() | st.integers(0, 60),
       until=st.none() | st.integers(0, 60), torn=st.binary(max_size=40).filter(lambda b: b"\n" not in b),
       junk=st.sampled_from([b"", b"not a record\n", b"1970-01-01T00:00:00.000000000Z F " + b"x" * (3 * MAX_LINE) + b"\n"]),
       block=st.sampled_from([7, 64, 65536]))
def test_reading_in_blocks_from_either_end_gives_what_the_whole_files_give(
        tmp_path_factory: pytest.TempPathFactory, spec: list[tuple[int, int, bytes]], tail: int | None, since: int | None,
        until: int | None, torn: bytes, junk: bytes, block: int) -> None:
    directory = tmp_path_factory.mktemp("logs")
    writers = {s: LogWriter(directory / name, cap=200) for s, name in ((1, "stdout.log"), (2, "stderr.log"))}
    ts = 0
    for stream, step, data in spec:  # seconds apart, so since and until cut between records
        ts += step * S
        writers[stream].write(LogRecord(ts, stream, data, True))  # type: ignore[arg-type]
    for writer in writers.values():
        writer.close()
    with (directory / "stdout.log").open("ab") as f:
        f.write(junk + torn)  # a foreign line (or one too long to be ours), then a write torn by a crash
    logs = ModuleLogs(directory, cap=200)
    options = LogOptions(tail=tail, since=since, until=until)
    history = whole_files(directory)
    with mock.patch.object(proclogs, "_BLOCK", block):  # lines across blocks, blocks across lines
        assert logs.history() == history
        assert list(logs.stored(newest_first=True)) == history[::-1]
        if tail is not None:
            got, newest = logs.tail(options)
            assert got == list(select(history, options))
            assert newest == (history[-1].ts_ns if history else 0)


def test_the_intake_allows_a_seconds_burst_then_its_rate() -> None:
    now = [100.0]
    intake = Intake(records_per_second=1000, bytes_per_second=10_000, clock=lambda: now[0])
    assert intake.spend(1000, 100) == 0.0  # a second's worth at once
    assert intake.spend(500, 0) == 0.5  # half a second over: stop reading for that long
    now[0] += 0.5
    assert intake.spend(0, 0) == 0.0
    assert intake.spend(0, 20_000) == 1.0  # bytes count too, and the longer wait wins
    now[0] += 60
    assert intake.spend(1000, 10_000) == 0.0  # refilled, but never beyond a second's worth
    assert intake.spend(1, 0) > 0


def test_pump_stops_reading_when_over_its_intake_and_drains_once_the_process_exited() -> None:
    handed: list[int] = []
    now = [0.0]
    intake = Intake(records_per_second=1000, bytes_per_second=10**9, clock=lambda: now[0])

    async def run() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(b"\n" * 5000)
        reader.feed_eof()
        exited = asyncio.Event()
        task = asyncio.create_task(pump(reader, lambda lines, pieces: handed.append(len(lines)), intake, exited))
        for _ in range(20):
            await asyncio.sleep(0)
        assert sum(handed) < 5000  # one second's worth and a slice, then waiting (the clock stands still)
        exited.set()
        async with asyncio.timeout(5):
            await task  # the rest at once: what the pipe held when the process exited

    loop = asyncio.new_event_loop()  # its own loop: asyncio.run() would reset the loop other tests share
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    assert sum(handed) == 5000
    assert max(handed) <= 2048  # a chunk is handed over in slices, the loop running between them


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.sampled_from([0, 1, 9, 33, proclogs._MAX_RECORD, proclogs._MAX_RECORD + 1, 3 * MAX_LINE]),
                        max_size=8),
       torn=st.integers(0, 70_000), block=st.sampled_from([7, 4096, 65536]))
def test_lines_read_in_blocks_are_the_files_lines_but_the_overlong(tmp_path_factory: pytest.TempPathFactory,
                                                                  lengths: list[int], torn: int, block: int) -> None:
    lines = [bytes([97 + i % 26]) * n for i, n in enumerate(lengths)]
    path = tmp_path_factory.mktemp("lines") / "f"
    path.write_bytes(b"".join(line + b"\n" for line in lines) + b"t" * torn)
    kept = [line for line in lines if len(line) <= proclogs._MAX_RECORD]
    fd = os.open(path, os.O_RDONLY)
    try:
        with mock.patch.object(proclogs, "_BLOCK", block):
            size = os.fstat(fd).st_size
            # An overlong line is left out, or given whole (a block held it) for the caller to skip; never a piece.
            forward = [line for line in proclogs._lines_forward(fd, size) if len(line) <= proclogs._MAX_RECORD]
            backwards = [line for line in proclogs._lines_backwards(fd, size) if len(line) <= proclogs._MAX_RECORD]
            assert forward == kept
            assert backwards == kept[::-1]
    finally:
        os.close(fd)
