"""The refusal trace's rate limit: bounded per caller, never silencing another caller, nothing lost uncounted."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import pytest

from edgeward.access.refusals import RefusalRecorder

# the module, not the process-wide recorder of the same name that edgeward.access exports
refusals_module = importlib.import_module("edgeward.access.refusals")


class Sink:
    def __init__(self) -> None:
        self.records: list[tuple[str, str | None, dict[str, Any]]] = []

    def append(self, kind: str, module: str | None = None, detail: Mapping[str, Any] | None = None) -> None:
        self.records.append((kind, module, dict(detail or {})))


def refuse(rec: RefusalRecorder, where: str, route: str = "POST /sign", uid: int = 0) -> bool:
    module = where.removeprefix("module ") if where.startswith("module ") else None
    return rec.record(service="workload", pid=42, uid=uid, where=where, module=module, step="registration_for",
                      route=route, status=403, message="no")


def test_a_flood_from_many_modules_never_silences_another_modules_first_refusal() -> None:
    rec, sink = RefusalRecorder(), Sink()
    rec.set_sink(sink)
    for m in range(8):
        for route in range(6):
            for _ in range(20):
                refuse(rec, f"module flood{m}", f"POST /r{route}")
    assert refuse(rec, "module quiet")
    assert sink.records[-1][2]["caller"] == "module quiet"
    assert len(sink.records) == 8 * 10 + 1  # each flooding module: 10 a minute in all


def test_unattributed_callers_whatever_cgroup_they_claim_are_one_caller_per_uid() -> None:
    """A process that writes itself into fresh cgroups cannot mint callers: it is 'elsewhere' under its kernel uid,
    one budget whatever it claims."""
    rec, sink = RefusalRecorder(), Sink()
    rec.set_sink(sink)
    for i in range(2000):
        refuse(rec, f"container {i:012x}", route=f"POST /r{i % 7}", uid=4444)
    assert len(sink.records) == 10  # per_caller
    assert refuse(rec, "container 0f0f", uid=1000)
    assert sink.records[-1][2]["uid"] == 1000


def test_a_uid_flooding_from_namespaces_of_its_own_does_not_hide_another_uids_refusal() -> None:
    """Break-this review, session 12 (a01): uid 4444 in its own user+pid namespaces spent the one shared
    "elsewhere" budget on a route, and uid 1000's later refusal there (also in namespaces of its own) left no
    record; the summary named no uid."""
    rec, sink = RefusalRecorder(), Sink()
    rec.set_sink(sink)
    for _ in range(60):
        refuse(rec, "elsewhere", route="GET /key/{keyId}", uid=4444)
    assert refuse(rec, "elsewhere", route="GET /key/{keyId}", uid=1000)
    assert [r[2]["uid"] for r in sink.records] == [4444] * 3 + [1000]


def test_callers_that_can_take_any_uid_mint_a_bounded_number_of_budgets() -> None:
    """Root in a container with no user namespace can be any uid: at most `elsewhere_uids` budgets of their own a
    window, the rest share one; the host's users and the modules keep theirs."""
    rec, sink = RefusalRecorder(elsewhere_uids=32, per_caller=10, elsewhere=30), Sink()
    rec.set_sink(sink)
    for i in range(2000):
        for _ in range(12):
            refuse(rec, f"container {i:012x}", route=f"POST /r{i % 7}", uid=i)
    assert len(sink.records) <= 32 * 3 + 30
    assert refuse(rec, "host", uid=4321) and refuse(rec, "module victim")


def test_suppressed_refusals_are_summarised_when_the_window_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(refusals_module.time, "monotonic", lambda: now[0])
    rec, sink = RefusalRecorder(window=60.0), Sink()
    rec.set_sink(sink)
    for _ in range(30):
        refuse(rec, "module noisy")
    now[0] += 61
    refuse(rec, "module noisy")
    kinds = [k for k, _, _ in sink.records]
    assert kinds == ["access.refused"] * 3 + ["access.refused.suppressed", "access.refused"]
    summary = sink.records[3][2]
    assert summary["suppressed"] == 27 and summary["most"] == {"workload POST /sign module noisy at "
                                                               "registration_for": 27}


def test_distinct_callers_are_bounded_per_window() -> None:
    rec, sink = RefusalRecorder(max_callers=10, elsewhere=5), Sink()
    rec.set_sink(sink)
    for i in range(50):
        refuse(rec, "host", uid=1000 + i)
    assert len(sink.records) == 10 + 3  # ten callers, then everyone else shares one (3 a route)
