"""Automatic renewal with short-lived certificates (seconds), key rotation on every key backend, and recovery of a
rotation that a crash cut in half."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from edgeward.certs.renewal import ManagedCert, RenewalEvent
from edgeward.certs.x509sign import handle_public_key, same_public_key, sign_csr
from tests.fixtures.certs import CertsEnv, serve_certs
from tests.fixtures.keys import BACKENDS

pytestmark = pytest.mark.asyncio(loop_scope="session")


def config(lifetime_s: int, rotate: bool) -> dict[str, object]:
    return {"cert_issuance": {
        "local_ca": {"cert": "ca", "pk": "ca"},
        "edge-server": {"method": "local_ca", "expiry_seconds": lifetime_s, "common_name": "edge.example",
                        "auto_renew": {"rotate_key": rotate, "threshold": "50%", "retry": "10%"}},
    }}


async def next_event(queue: asyncio.Queue[RenewalEvent], timeout: float = 30) -> RenewalEvent:
    return await asyncio.wait_for(queue.get(), timeout)


async def cert_matches_key(env: CertsEnv, cert_id: str, key_id: str) -> x509.Certificate:
    leaf = x509.load_pem_x509_certificates((await env.service.get_cert(cert_id)).encode())[0]
    public = await handle_public_key(env.keys, await env.keys.load_key_pair(key_id))
    assert same_public_key(leaf.public_key(), public)
    return leaf


@pytest.mark.parametrize("kind", BACKENDS)
async def test_short_lived_cert_is_renewed_with_a_new_key_before_it_expires(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with serve_certs(kind, request, tmp_path, config(4, rotate=True)) as env:
        events = env.engine.subscribe()
        await env.engine.start()
        first = await next_event(events)  # no cert yet: issued at once
        leaf1 = await cert_matches_key(env, "edge-server", "edge-server")
        second = await next_event(events)  # then renewed at ~50% of its 4 s life
        leaf2 = await cert_matches_key(env, "edge-server", "edge-server")
        assert second.rotated_key and first.rotated_key
        assert not same_public_key(leaf1.public_key(), leaf2.public_key())
        assert second.previous_not_after == leaf1.not_valid_after_utc
        assert leaf2.not_valid_after_utc > leaf1.not_valid_after_utc
        assert dt.datetime.now(dt.UTC) < leaf1.not_valid_after_utc  # renewed before the old one expired
        assert leaf2.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge.example"
        (status,) = env.engine.status()
        assert status.renewals == 2 and status.failures == 0 and status.last_error is None


async def test_without_rotation_the_key_is_kept(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    async with serve_certs("software", request, tmp_path, config(4, rotate=False)) as env:
        events = env.engine.subscribe()
        await env.engine.start()
        await next_event(events)
        leaf1 = await cert_matches_key(env, "edge-server", "edge-server")
        event = await next_event(events)
        leaf2 = await cert_matches_key(env, "edge-server", "edge-server")
        assert not event.rotated_key
        assert same_public_key(leaf1.public_key(), leaf2.public_key())
        assert leaf1.serial_number != leaf2.serial_number


async def _half_rotation(env: CertsEnv, m: ManagedCert, store_cert: bool) -> x509.Certificate:
    """Do a rotation up to (and maybe including) storing the new cert, then "crash" before the key move."""
    handle = await env.keys.create_key_pair_if_not_exists(m.temp_key_id, "ec-p256")
    public = await handle_public_key(env.keys, handle)
    csr = await sign_csr(x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge.example")])), env.keys, handle, public)
    chain = await env.service.issue_chain(m.cert_id, csr, None)
    if store_cert:
        await env.service.write_chain(m.cert_id, chain)
    return chain[0]


@pytest.mark.parametrize("stored", [True, False], ids=["crash-after-cert-stored", "crash-before-cert-stored"])
async def test_recover_leaves_the_old_or_the_new_pair_never_a_mismatch(
    stored: bool, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with serve_certs("software", request, tmp_path, config(3600, rotate=True)) as env:
        m = env.engine.managed[0]
        events = env.engine.subscribe()
        await env.engine.start()
        await next_event(events)
        old = await cert_matches_key(env, m.cert_id, m.key_id)
        await env.engine.stop()
        new = await _half_rotation(env, m, store_cert=stored)
        await env.engine.recover(m)
        now = await cert_matches_key(env, m.cert_id, m.key_id)
        assert now.serial_number == (new if stored else old).serial_number
        with pytest.raises(Exception, match="not found"):
            await env.keys.load_key_pair(m.temp_key_id)


async def test_missing_or_mismatched_cert_is_renewed_at_once(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    async with serve_certs("software", request, tmp_path, config(3600, rotate=False)) as env:
        events = env.engine.subscribe()
        await env.engine.start()
        await next_event(events)
        await env.engine.stop()
        # someone replaced the key: the cert no longer matches it
        handle = await env.keys.load_key_pair("edge-server")
        await env.keys.delete_key_pair(handle)
        await env.keys.create_key_pair_if_not_exists("edge-server", "ec-p256")
        await env.engine.start()
        await next_event(events, timeout=10)
        await cert_matches_key(env, "edge-server", "edge-server")


@pytest.mark.parametrize("grace", [30.0, 0.2], ids=["within-grace", "past-grace"])
async def test_a_stop_lets_a_key_rotation_under_way_finish(grace: float, request: pytest.FixtureRequest,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop (not a crash) while a rotation commits (new chain written, new key moved in place) waits for it, so
    the next start has nothing to finish; past the grace it is cut, and the start's recovery still leaves a
    matching pair."""
    async with serve_certs("software", request, tmp_path, config(3600, rotate=True)) as env:
        keys = env.service.keys
        reached, release = asyncio.Event(), asyncio.Event()
        move = keys.move_key_pair

        async def slow_move(source: str, target: str) -> None:
            reached.set()
            await release.wait()
            await move(source, target)

        monkeypatch.setattr(keys, "move_key_pair", slow_move)
        env.engine.stop_grace = grace
        await env.engine.start()  # no cert yet: issued at once, with a new key
        await asyncio.wait_for(reached.wait(), 30)
        stopping = asyncio.create_task(env.engine.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()  # it waits for the commit
        if grace > 1:
            release.set()
            await asyncio.wait_for(stopping, 30)
            with pytest.raises(Exception, match="not found"):
                await env.keys.load_key_pair("edge-server.next")  # nothing left for the next start to finish
        else:
            await asyncio.wait_for(stopping, 30)  # cut at the grace, the move never ran
            monkeypatch.setattr(keys, "move_key_pair", move)
            for m in env.engine.managed:
                await env.engine.recover(m)
        await cert_matches_key(env, "edge-server", "edge-server")


async def test_a_stop_does_not_wait_for_a_renewal_that_has_not_reached_its_commit(
        request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A renewal stuck before its commit (a keys service or an EST server that does not answer) is cancelled at
    once by a stop: the grace is for the commit only."""
    async with serve_certs("software", request, tmp_path, config(3600, rotate=True)) as env:
        keys = env.service.keys
        reached = asyncio.Event()

        async def stuck(*_: object) -> str:
            reached.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        monkeypatch.setattr(keys, "create_key_pair_if_not_exists", stuck)
        env.engine.stop_grace = 30.0
        await env.engine.start()
        await asyncio.wait_for(reached.wait(), 30)
        await asyncio.wait_for(env.engine.stop(), 2)
