"""The bounded-rate log of lines a caller can cause at will (certd's "issued cert")."""

from __future__ import annotations

import asyncio
import logging

import pytest

from edgeward.repeat_log import SUMMARY_TASK, RepeatLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _info(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]


def test_info_lines_are_bounded_per_interval_whatever_the_keys_and_the_next_interval_starts_with_a_summary(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = RepeatLog(logging.getLogger("edgeward.test.repeat"), "issued cert", interval=60, budget=10, max_keys=50,
                    clock=clock)
    caplog.set_level(logging.DEBUG, logger="edgeward.test.repeat")
    for i in range(10_000):  # one key repeated, then ever new keys, as fast as a caller can
        log.log("same" if i < 5000 else f"id{i}", "issued cert %r", "same" if i < 5000 else f"id{i}")
    assert len(_info(caplog)) == 10  # 'same' once, then the first 9 new ids: the budget
    assert len(caplog.records) == 10_000  # every line is at DEBUG at least
    clock.now += 60
    log.log("same", "issued cert %r", "same")
    summary, again = _info(caplog)[10:]
    assert summary.startswith("9990 more 'issued cert' lines in the last 60 s went to debug only") and (
        "'same' 4999" in summary and "and 45 more keys" in summary and "(and 4942 lines of keys past the first 50)"
        in summary), summary
    assert again == "issued cert 'same'"  # a new interval: its first line at INFO again


def test_nothing_held_back_means_no_summary(caplog: pytest.LogCaptureFixture) -> None:
    log = RepeatLog(logging.getLogger("edgeward.test.repeat"), "issued cert", clock=Clock())
    caplog.set_level(logging.DEBUG, logger="edgeward.test.repeat")
    for key in ("a", "b", "c"):
        log.log(key, "issued cert %r", key)
    log.flush()
    assert _info(caplog) == ["issued cert 'a'", "issued cert 'b'", "issued cert 'c'"]


async def test_the_summary_comes_at_the_interval_end_without_a_further_line(caplog: pytest.LogCaptureFixture) -> None:
    summarised = asyncio.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "more 'issued cert' lines" in record.getMessage():
                summarised.set()

    logger = logging.getLogger("edgeward.test.repeat.timer")
    logger.addHandler(handler := Seen())
    try:
        log = RepeatLog(logger, "issued cert", interval=0.2)
        caplog.set_level(logging.DEBUG, logger="edgeward.test.repeat.timer")
        for _ in range(3):
            log.log("x", "issued cert %r", "x")
        await asyncio.wait_for(summarised.wait(), 10)
        assert _info(caplog)[1].startswith("2 more 'issued cert' lines in the last 0 s"), _info(caplog)
    finally:
        logger.removeHandler(handler)


async def test_a_pending_summary_is_logged_when_the_loop_cancels_it(caplog: pytest.LogCaptureFixture) -> None:
    """The daemon stopping (asyncio.run cancels what is left) logs what the interval held back so far."""
    log = RepeatLog(logging.getLogger("edgeward.test.repeat"), "issued cert", interval=3600)
    caplog.set_level(logging.DEBUG, logger="edgeward.test.repeat")
    log.log("x", "issued cert %r", "x")
    log.log("x", "issued cert %r", "x")
    pending = [t for t in asyncio.all_tasks() if t.get_name() == SUMMARY_TASK]
    assert len(pending) == 1
    pending[0].cancel()  # before it ever ran, even
    with pytest.raises(asyncio.CancelledError):
        await pending[0]
    summarised = asyncio.Event()
    asyncio.get_running_loop().call_soon(summarised.set)  # after the done callbacks already scheduled
    await summarised.wait()
    assert _info(caplog)[1].startswith("1 more 'issued cert' lines"), _info(caplog)


def test_a_warning_stays_a_warning_and_threads_may_share_one_log(caplog: pytest.LogCaptureFixture) -> None:
    """identityd's "answering from the local copy" is a WARNING, and so is its summary; the keys fallback backend
    logs from executor threads, several at once."""
    import threading

    clock = Clock()
    log = RepeatLog(logging.getLogger("edgeward.test.repeat"), "from the copy", budget=3, level=logging.WARNING,
                    clock=clock)
    caplog.set_level(logging.DEBUG, logger="edgeward.test.repeat")
    errors: list[BaseException] = []

    def flood(t: int) -> None:
        try:
            for i in range(2_000):
                log.log(f"k{t}-{i % 7}", "line %d", i)
                if i % 500 == 0:
                    log.flush()
        except BaseException as e:  # a race in the counters would show here
            errors.append(e)

    threads = [threading.Thread(target=flood, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    log.flush()
    above_debug = [r for r in caplog.records if r.levelno > logging.DEBUG]
    assert above_debug and {r.levelno for r in above_debug} == {logging.WARNING}
    lines = [r for r in above_debug if r.getMessage().startswith("line")]
    summaries = [r for r in above_debug if "more 'from the copy' lines" in r.getMessage()]
    assert len(lines) <= 3 * 17 and len(summaries) <= 17  # at most 3 lines per interval: 4 x 4 flushes + 1
    held = sum(int(r.getMessage().split()[0]) for r in summaries)
    assert held + len(lines) == 8_000  # every line is either logged or counted
