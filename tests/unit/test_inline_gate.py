"""The gate that lets a token sign on the event loop: open only for a token shown fast on worker threads, shut
by a few slow signatures in a row on the loop (a USB token must never block the loop)."""

from __future__ import annotations

from edgeward.keys.backends.inline_gate import FAST_SECONDS, SLOW_IN_A_ROW, SLOW_SECONDS, WINDOW, InlineGate


def test_a_fast_token_opens_the_gate_despite_some_gil_waits() -> None:
    gate = InlineGate()
    for i in range(WINDOW):
        assert not gate.allows()
        gate.record_offloaded(FAST_SECONDS / 10 if i % 2 else SLOW_SECONDS * 3)  # half waited for the GIL
    assert gate.allows()


def test_a_slow_token_never_opens_it_and_one_slow_inline_signature_shuts_it() -> None:
    slow = InlineGate()
    for _ in range(WINDOW * 3):
        slow.record_offloaded(0.02)  # a USB token: 20 ms a signature
    assert not slow.allows()
    gate = InlineGate()
    for _ in range(WINDOW):
        gate.record_offloaded(FAST_SECONDS / 10)
    assert gate.allows()
    gate.record_inline(FAST_SECONDS / 2)
    assert gate.allows()
    gate.record_inline(SLOW_SECONDS)  # one slow one (the loop was preempted): still open
    gate.record_inline(FAST_SECONDS / 2)
    for _ in range(SLOW_IN_A_ROW - 1):
        gate.record_inline(SLOW_SECONDS)
    assert gate.allows()
    gate.record_inline(SLOW_SECONDS)
    assert not gate.allows()
    for _ in range(WINDOW - 1):  # it takes a whole window of fast ones to open again
        gate.record_offloaded(FAST_SECONDS / 10)
    assert not gate.allows()
    gate.record_offloaded(FAST_SECONDS / 10)
    assert gate.allows()
