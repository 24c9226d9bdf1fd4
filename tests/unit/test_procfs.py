"""Parsers of the process engine: /proc/<pid>/stat, log records and timestamps, line splitting, User strings."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeward.runtime.engine import EngineError, LogOptions
from edgeward.runtime.engines.procfs import ancestors, parse_stat, read_stat
from edgeward.runtime.engines.proclaunch import parse_user
from edgeward.runtime.engines.proclogs import (
    MAX_LINE,
    LogRecord,
    ModuleLogs,
    format_record,
    format_timestamp,
    parse_record,
    parse_timestamp,
    pump,
    select,
)

# comm is chosen by the process itself: anything but NUL, up to 64 bytes here (the kernel keeps 15).
comms = st.binary(min_size=0, max_size=64).filter(lambda b: b"\0" not in b)
numbers = st.integers(min_value=0, max_value=2**63 - 1)


@given(pid=st.integers(1, 2**22), comm=comms, state=st.sampled_from("RSDZTtXIP"), ppid=st.integers(0, 2**22),
       pgrp=st.integers(0, 2**22), session=st.integers(0, 2**22), utime=numbers, stime=numbers,
       start=numbers, rss=numbers)
def test_stat_parses_whatever_the_command_name_holds(pid: int, comm: bytes, state: str, ppid: int, pgrp: int,
                                                      session: int, utime: int, stime: int, start: int,
                                                      rss: int) -> None:
    # Fields 3.. of a real line, with ours at their positions (field n is at index n - 3).
    rest = [state, ppid, pgrp, session, 34816, -1, 4194560, 100, 0, 0, 0, utime, stime, 0, 0, 20, 0, 1, 0, start,
            1000, rss, 2**64 - 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 17, 1, 0, 0, 0, 0, 0]
    line = f"{pid} (".encode() + comm + b") " + " ".join(str(x) for x in rest).encode() + b"\n"
    got = parse_stat(line)
    assert (got.pid, got.comm, got.state, got.ppid, got.pgrp, got.session) == (pid, comm, state, ppid, pgrp, session)
    assert (got.utime, got.stime, got.start_time, got.rss_pages) == (utime, stime, start, rss)


@pytest.mark.parametrize("raw", [b"", b"123", b"123 (sh", b"123 (sh) S 1 2", b"x (sh) " + b"0 " * 40, b"(sh) S"])
def test_stat_refuses_what_is_not_a_stat_line(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_stat(raw)


def test_stat_of_this_process_and_its_ancestry() -> None:
    me = read_stat(os.getpid())
    assert me is not None
    assert me.ppid == os.getppid()
    assert me.pgrp == os.getpgrp()
    chain = [p.pid for p in ancestors(os.getpid())]
    assert chain[:2] == [os.getpid(), os.getppid()]
    assert read_stat(2**22 + 4321) is None


timestamps = st.integers(min_value=0, max_value=253402300799 * 10**9 + 999_999_998)  # up to 9999-12-31


@given(timestamps)
def test_timestamps_round_trip_and_sort_as_text(ts: int) -> None:
    text = format_timestamp(ts)
    assert len(text) == 30
    assert parse_timestamp(text) == ts
    assert text < format_timestamp(ts + 1)


@given(ts=timestamps, stream=st.sampled_from([1, 2]), data=st.binary(max_size=200).filter(lambda b: b"\n" not in b),
       complete=st.booleans())
def test_log_records_round_trip(ts: int, stream: int, data: bytes, complete: bool) -> None:
    record = LogRecord(ts, stream, data, complete)  # type: ignore[arg-type]
    line = format_record(record)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert parse_record(line[:-1], stream) == record  # type: ignore[arg-type]


@pytest.mark.parametrize("line", [b"", b"garbage", b"2024-01-01T00:00:00.000000000Z X data",
                                  b"2024-01-01T00:00:00.000000000Zdata", b"2024-13-01T00:00:00.000000000Z F x",
                                  b"2024-01-01T00:00:00.00000000Z F x"])
def test_log_lines_that_are_not_records_are_refused(line: bytes) -> None:
    with pytest.raises(ValueError):
        parse_record(line, 1)


@settings(max_examples=60)
@given(st.lists(st.binary(max_size=3 * MAX_LINE // 2), max_size=8))
def test_pump_splits_any_output_into_lines_without_losing_a_byte(chunks: list[bytes]) -> None:
    pieces: list[tuple[bytes, bool]] = []

    async def run() -> None:
        reader = asyncio.StreamReader()
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
        await pump(reader, lambda lines, over: pieces.extend([(d, True) for d in lines] + [(d, False) for d in over]))

    loop = asyncio.new_event_loop()  # its own loop: asyncio.run() would reset the loop other tests share
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    assert b"".join(d + (b"\n" if c else b"") for d, c in pieces) == b"".join(chunks)
    for data, _ in pieces:
        assert b"\n" not in data
        assert len(data) <= MAX_LINE


def test_select_applies_since_until_then_tail() -> None:
    s = 10**9
    records = [LogRecord(t * s, 1, str(t).encode(), True) for t in range(1, 11)]
    assert [r.data for r in select(records, LogOptions(since=3, until=6))] == [b"3", b"4", b"5", b"6"]
    assert [r.data for r in select(records, LogOptions(since=3, until=6, tail=2))] == [b"5", b"6"]
    assert list(select(records, LogOptions(tail=0))) == []
    assert len(list(select(records, LogOptions()))) == 10


def test_log_files_rotate_at_their_cap_and_keep_one_generation(tmp_path: Path) -> None:
    logs = ModuleLogs(tmp_path, cap=1000)
    for i in range(200):
        logs.write(1 if i % 3 else 2, f"line {i:04d}".encode(), True)
    logs.close()
    for name in ("stdout.log", "stdout.log.1", "stderr.log", "stderr.log.1"):
        assert (tmp_path / name).stat().st_size <= 1000, name
    kept = logs.history()
    assert kept[-1].data == b"line 0199"
    assert 0 < len(kept) < 200
    assert [r.ts_ns for r in kept] == sorted(r.ts_ns for r in kept)
    numbers_kept = [int(r.data.split()[1]) for r in kept if r.stream == 1]
    assert numbers_kept == sorted(numbers_kept)


def test_a_torn_last_line_is_skipped_not_misread(tmp_path: Path) -> None:
    logs = ModuleLogs(tmp_path, cap=10**6)
    logs.write(1, b"whole", True)
    logs.close()
    with (tmp_path / "stdout.log").open("ab") as f:
        f.write(b"2024-01-01T00:00:00.0000")  # a write cut short by a crash
    assert [r.data for r in logs.history()] == [b"whole"]


@given(st.integers(0, 2**32 - 2), st.integers(0, 2**32 - 2))
def test_numeric_user_and_group_parse_as_given(uid: int, gid: int) -> None:
    assert parse_user(f"{uid}:{gid}") == (uid, gid)


def test_user_names_resolve_and_nonsense_is_refused() -> None:
    assert parse_user("root") == (0, 0)
    assert parse_user("0") == (0, 0)
    assert parse_user("root:0") == (0, 0)
    for bad in ("", ":", "1:", ":1", "1:2:3", "no-such-user-at-all", "0:no-such-group-at-all"):
        with pytest.raises(EngineError) as refused:
            parse_user(bad)
        assert refused.value.status == 400
