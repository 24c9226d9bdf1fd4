"""The quote queue (A3 of the break-this review): the verifier's integrity quotes are never refused 503 and never
wait behind another client's identity quotes; a client's second quote waits for its first a bounded time, then is
told to retry with a status its asker retries; identity quotes are rate limited per client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edgeward.keylime.quote_queue import QuoteDeferred, QuoteQueue
from edgeward.keylime.quotes import Quoter


async def _hold(queue: QuoteQueue, peer: str, kind: Any, order: list[str], release: asyncio.Event) -> None:
    async with queue.turn(peer, kind):
        order.append(f"{peer}:{kind}")
        await release.wait()


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_the_verifiers_integrity_quote_goes_before_identity_quotes_queued_earlier() -> None:
    queue = QuoteQueue(turn_wait=5)
    order: list[str] = []
    gates = {name: asyncio.Event() for name in ("a", "b", "c", "verifier")}
    tasks = [asyncio.create_task(_hold(queue, "a", "identity", order, gates["a"]))]
    await _settle()
    tasks += [asyncio.create_task(_hold(queue, p, "identity", order, gates[p])) for p in ("b", "c")]
    await _settle()
    tasks.append(asyncio.create_task(_hold(queue, "verifier", "integrity", order, gates["verifier"])))
    await _settle()
    assert order == ["a:identity"]  # one quote at a time
    for name in ("a", "verifier", "b", "c"):
        gates[name].set()
    await asyncio.gather(*tasks)
    assert order == ["a:identity", "verifier:integrity", "b:identity", "c:identity"]


async def test_a_clients_second_quote_waits_for_its_first_then_gets_a_status_its_asker_retries() -> None:
    queue = QuoteQueue(peer_wait=0.05)
    release = asyncio.Event()
    order: list[str] = []
    held = [asyncio.create_task(_hold(queue, "v", kind, order, release)) for kind in ("integrity", "identity")]
    await _settle()
    with pytest.raises(QuoteDeferred) as integrity:
        await _hold(queue, "v", "integrity", order, release)
    with pytest.raises(QuoteDeferred) as identity:
        await _hold(queue, "v", "identity", order, release)
    assert integrity.value.status == 408  # Keylime's verifier retries 408, 500 and 599 only
    assert identity.value.status == 504  # keylime_tenant retries 503 and 504
    # another client's integrity quote is queued behind the one being taken, not refused
    other = asyncio.create_task(_hold(queue, "w", "integrity", order, release))
    await _settle()
    release.set()
    await asyncio.gather(*held, other)
    assert order == ["v:integrity", "w:integrity", "v:identity"]
    assert not queue._slots and not queue._busy  # nothing left behind


async def test_a_second_quote_of_the_same_client_is_taken_once_the_first_is_done() -> None:
    queue = QuoteQueue(peer_wait=5)
    release = asyncio.Event()
    order: list[str] = []
    first = asyncio.create_task(_hold(queue, "v", "integrity", order, release))
    await _settle()
    second = asyncio.create_task(_hold(queue, "v", "integrity", order, release))
    await _settle()
    assert order == ["v:integrity"]
    release.set()
    await asyncio.gather(first, second)
    assert order == ["v:integrity", "v:integrity"]


async def test_identity_quotes_are_rate_limited_per_client_with_a_wait_before_the_refusal() -> None:
    now = [0.0]
    queue = QuoteQueue(peer_wait=0.015, identity_rate=100.0, identity_burst=2.0, clock=lambda: now[0])
    for _ in range(2):  # the burst
        async with queue.turn("t", "identity"):
            pass
    async with queue.turn("t", "identity"):  # the next token is 10 ms away: waited for
        pass
    with pytest.raises(QuoteDeferred) as refused:  # the clock stands still: the one after is 20 ms away, too far
        async with queue.turn("t", "identity"):
            pass
    assert refused.value.status == 429 and refused.value.retry_after is not None
    async with queue.turn("other", "identity"):  # per client
        pass
    async with queue.turn("t", "integrity"):  # the verifier's quotes are not rate limited
        pass
    now[0] += 1.0
    async with queue.turn("t", "identity"):  # refilled
        pass


async def test_a_waiter_cancelled_after_it_was_handed_the_turn_passes_it_on() -> None:
    queue = QuoteQueue()
    release = asyncio.Event()
    order: list[str] = []
    first = asyncio.create_task(_hold(queue, "a", "identity", order, release))
    await _settle()
    leaving = asyncio.create_task(_hold(queue, "b", "identity", order, asyncio.Event()))
    staying = asyncio.create_task(_hold(queue, "c", "identity", order, release))
    await _settle()
    handed = queue._waiting["identity"][0]  # b's
    release.set()
    while not handed.done():  # a finishes and hands b the turn; b is cancelled before it runs
        await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.gather(first, staying)
    assert order == ["a:identity", "c:identity"] and not queue._busy
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_identity_quote_loops_of_another_client_leave_the_verifier_one_quote_to_wait_at_most() -> None:
    """The attack as the Quoter sees it: four loops of identity quotes, each quote taking 20 ms of TPM time; the
    verifier's integrity quotes meanwhile each wait for at most the quote being taken."""
    class Tpm:
        async def run_exclusive(self, op: Any) -> Any:
            await asyncio.sleep(0.02)
            raise _Taken

    class _Taken(Exception):
        pass

    quoter = Quoter(Tpm(), 0x81004B41, "rsa", "", None, queue=QuoteQueue(peer_wait=0.1))  # type: ignore[arg-type]
    answers: dict[str, int] = {}
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            try:
                await quoter.identity("abc", "attacker")
            except _Taken:
                answers["200"] = answers.get("200", 0) + 1
            except QuoteDeferred as e:
                answers[str(e.status)] = answers.get(str(e.status), 0) + 1

    loops = [asyncio.create_task(loop()) for _ in range(4)]
    waits = []
    for _ in range(10):
        started = asyncio.get_running_loop().time()
        with pytest.raises(_Taken):
            await quoter.integrity("abc", "0x1", "1", "0", "verifier")
        waits.append(asyncio.get_running_loop().time() - started)
    stop.set()
    await asyncio.gather(*loops)
    assert max(waits) < 0.02 * 2 + 0.02, waits  # its own quote and at most the one being taken (and some slack)
    assert "503" not in answers and answers.get("200", 0) >= 1, answers
