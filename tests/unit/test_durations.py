"""since/until as aziot-edged's parse_since reads them: RFC 3339, unix seconds (32-bit), humantime durations."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeward.runtime.durations import BadTime, parse_since

NOW = 1_700_000_000.0


@pytest.mark.parametrize(("value", "expected"), [
    ("2019-09-27T16:00:00+00:00", 1_569_600_000), ("2019-09-27T18:00:00+02:00", 1_569_600_000),
    ("2019-09-27t16:00:00.123Z", 1_569_600_000), ("1569600000", 1_569_600_000), ("-5", -5), ("0", 0),
    ("10m", NOW - 600), ("1d", NOW - 86400), ("2 days 3 hours", NOW - 2 * 86400 - 3 * 3600),
    ("1h30m", NOW - 5400), ("1 hour 20m", NOW - 4800), ("90m", NOW - 5400), ("1 week", NOW - 7 * 86400),
    ("1M", NOW - 2_630_016), (" 5s ", NOW - 5), ("250ms", NOW - 1),
])
def test_parse_since_reads_what_aziot_edged_reads(value: str, expected: float) -> None:
    assert parse_since(value, "since", now=NOW) == int(expected)


@pytest.mark.parametrize("value", ["", "yesterday", "1.5", "10 parsecs", "5m ago", "m5", "1h-", "2019-13-01T00:00:00Z",
                                   "2019-09-27T16:00:00", "99999999999", "1000y", "100000000000000000000s",
                                   "2019-09-27T16:00:00+24:00"])
def test_parse_since_refuses_what_aziot_edged_refuses(value: str) -> None:
    with pytest.raises(BadTime, match="invalid parameter: since"):
        parse_since(value, "since", now=NOW)


@given(st.lists(st.tuples(st.integers(0, 500), st.sampled_from(["s", "sec", "m", "min", "h", "hours", "d", "days",
                                                               "w", "weeks"])), min_size=1, max_size=4),
       st.sampled_from(["", " "]))
def test_duration_spans_add_up(spans: list[tuple[int, str]], sep: str) -> None:
    seconds = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hours": 3600, "d": 86400, "days": 86400,
               "w": 604800, "weeks": 604800}
    text = " ".join(f"{n}{sep}{unit}" for n, unit in spans)
    assert parse_since(text, "since", now=NOW) == int(NOW - sum(n * seconds[u] for n, u in spans))


@given(st.text(max_size=30))
def test_parse_since_never_raises_anything_but_bad_time(value: str) -> None:
    try:
        parse_since(value, "until", now=NOW)
    except BadTime:
        pass
