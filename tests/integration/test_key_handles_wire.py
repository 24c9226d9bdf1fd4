"""Key handles a caller tampered with, sent to the keys service over its real socket: every malformed or ambiguous
handle is refused with 401 and a message (never a 500), and the service keeps serving."""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
import pytest

from tests.fixtures.keys import KeysEnv

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def sign(env: KeysEnv, handle: str) -> tuple[int, Any]:
    """POST /sign with an HMAC over fixed data, as the identity service's clients do."""
    body = {"keyHandle": handle, "algorithm": "HMAC-SHA256",
            "parameters": {"message": base64.b64encode(b"data").decode()}}
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(env.socket))) as s, s.post(
        "http://keyd/sign?api-version=2020-09-01", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    ) as r:
        return r.status, await r.json()


async def valid_handle(env: KeysEnv) -> str:
    handle = await env.client.create_key_if_not_exists(env.new_id("hnd"), "sign")
    status, body = await sign(env, handle)
    assert status == 200, body
    return handle


@pytest.mark.parametrize("sig", ["é", "ü" * 44, "\u2603=", "\x00", "AAAA\u00a0"])
async def test_sign_with_a_handle_whose_sig_is_not_ascii_is_refused_with_401(software_keys: KeysEnv, sig: str) -> None:
    handle = await valid_handle(software_keys)
    sr = handle.partition("&")[0]
    status, body = await sign(software_keys, f"{sr}&sig={sig}")
    assert status == 401, body
    assert "key handle" in body["message"]
    assert (await sign(software_keys, handle))[0] == 200  # and it keeps serving


async def test_sign_with_a_handle_that_is_not_unicode_is_refused_as_a_bad_body(software_keys: KeysEnv) -> None:
    """A lone surrogate (valid JSON escape, invalid text) never reaches the handle parser: the body is refused."""
    handle = await valid_handle(software_keys)
    status, body = await sign(software_keys, handle.partition("&")[0] + "&sig=\ud800")
    assert status == 422 and "surrogate" in body["message"], body  # as aziot's serde refuses it: 422


async def test_sign_with_a_handle_whose_sr_is_not_ascii_is_refused_with_401(software_keys: KeysEnv) -> None:
    handle = await valid_handle(software_keys)
    sr, _, sig = handle.partition("&")
    status, body = await sign(software_keys, f"{sr}\u00e9&{sig}")
    assert status == 401, body


@pytest.mark.parametrize("shape", ["{h}&{sig}", "{sig}&{h}", "{h}&sig=AAAA", "{sr}&{h}", "{h}&{sr}", "{h}&",
                                   "{h}&x=1", "{h}&sig"])
async def test_sign_with_an_ambiguous_handle_is_refused_with_401(software_keys: KeysEnv, shape: str) -> None:
    """A repeated sr= or sig= (even a copy of the right one) or any extra field: one handle must mean one thing."""
    handle = await valid_handle(software_keys)
    sr, _, sig = handle.partition("&")
    status, body = await sign(software_keys, shape.format(h=handle, sr=sr, sig=sig))
    assert status == 401, body
    assert "key handle" in body["message"]


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.999])
async def test_a_handle_lives_at_least_the_seconds_asked(software_keys: KeysEnv, fraction: float,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """handleTtlSeconds=1 minted late in a second was dead on arrival (the expiry was rounded down to the second)."""
    from edgeward.http.peercred import Caller
    from edgeward.keys import service as service_module

    minted = 1_900_000_000 + fraction
    monkeypatch.setattr(service_module.time, "time", lambda: minted)
    api = software_keys.service.for_caller(Caller.this_process())
    handle = await api.create_key_pair_if_not_exists(software_keys.new_id(), "ec-p256", ttl_seconds=1)
    monkeypatch.undo()
    exp = json.loads(base64.b64decode(handle.split("&")[0][3:]))["exp"]
    assert minted + 1 <= exp < minted + 2
    software_keys.service.handles.verify(handle, now=minted + 0.99)  # still alive just before its second is up
