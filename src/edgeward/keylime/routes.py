"""The agent API Keylime's tenant and verifier call (pull mode, API 2.1-2.6), over mTLS only.

Parse, call the agent, answer in Keylime's envelope ``{"code", "status", "results"}``; nothing else. What a route
does is in :mod:`.quotes`, :mod:`.payloads` and :mod:`.revocation` (through :class:`.service.KeylimeAgent`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..http.internal_errors import InternalErrorLog
from .payloads import MAX_PAYLOAD, BootstrapPinned, PayloadError
from .quote_queue import QuoteDeferred
from .quotes import BadQuoteRequest

if TYPE_CHECKING:
    from .service import KeylimeAgent

__all__ = ["SUPPORTED_VERSIONS", "build_agent_app"]

log = logging.getLogger(__name__)
# any holder of a client certificate from the verifier's CA can repeat a failing request: a traceback per route and
# error a minute, not one per request
_INTERNAL_ERRORS = InternalErrorLog(log)

# Never 1.0: for it the verifier expects zlib-compressed quotes. 3.0 is push mode.
SUPPORTED_VERSIONS = ("2.1", "2.2", "2.3", "2.4", "2.5", "2.6")
Handler = Callable[["KeylimeAgent", web.Request], Awaitable[dict[str, Any]]]
# A notice is parsed on the event loop before anyone knows whether it is authentic: not the payload routes' 11 MB.
MAX_NOTICE = 256 * 1024
# Per route, from the Content-Length, before a byte is read: a V is a 256-byte RSA ciphertext in base64 (~400 bytes
# of JSON); a U is the same with an auth_tag, and may carry the tenant's payload (at most MAX_PAYLOAD, in base64).
MAX_VKEY_BODY = 4096
SMALL_UKEY_BODY = 64 * 1024  # a U without a payload; anything larger takes the one payload slot
MAX_UKEY_BODY = 4 * (MAX_PAYLOAD // 3 + 1) + SMALL_UKEY_BODY
PAYLOAD_WAIT_SECONDS = 2.0  # a second payload waits this long for the slot, then is answered 429
PAYLOAD_READ_SECONDS = 30.0  # the slot's holder must have sent its body by then (~400 KB/s for the largest)
PAYLOAD_SLOT = web.AppKey("keylime_payload_slot", asyncio.Semaphore)


class _Refused(Exception):
    def __init__(self, code: int, status: str) -> None:
        super().__init__(status)
        self.code, self.status = code, status


def _answer(code: int, status: str, results: dict[str, Any] | None = None) -> web.Response:
    return web.json_response({"code": code, "status": status, "results": results or {}}, status=code)


async def _body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"{}")
    except ValueError:
        raise _Refused(400, "the body is not JSON") from None


def _peer(request: web.Request) -> str:
    """The client certificate (its SHA-256) a quote is asked with: the verifier and a tenant may share an address,
    not a key."""
    tls = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = tls.getpeercert(binary_form=True) if tls is not None else None
    if not der:
        raise _Refused(403, "a client certificate is required")
    return hashlib.sha256(der).hexdigest()


async def _identity(agent: KeylimeAgent, request: web.Request) -> dict[str, Any]:
    return await agent.quoter.identity(request.query.get("nonce", ""), _peer(request))


async def _integrity(agent: KeylimeAgent, request: web.Request) -> dict[str, Any]:
    q = request.query
    return await agent.quoter.integrity(q.get("nonce", ""), q.get("mask", "0x0"), q.get("partial", "0"),
                                        q.get("ima_ml_entry", "0"), _peer(request))


def _length(request: web.Request, limit: int, what: str) -> int:
    if request.content_length is None:
        raise _Refused(411, f"{what} needs a Content-Length")
    if request.content_length > limit:
        raise _Refused(413, f"{what} is at most {limit} bytes")
    return request.content_length


async def _ukey(agent: KeylimeAgent, request: web.Request) -> dict[str, Any]:
    """One payload in memory at a time: a body beyond a bare key half waits briefly for the slot, then is refused
    (429), unread; a pinned agent refuses every U (409), unread."""
    length = _length(request, MAX_UKEY_BODY, "a U key half with its payload")
    if agent.payloads.pinned():
        raise _Refused(409, str(BootstrapPinned()))
    ukey = functools.partial(agent.payloads.ukey, peer=_peer(request))  # kept per client certificate
    if length <= SMALL_UKEY_BODY:
        _pinned_is_409(ukey, await _body(request))
        return {}
    slot = request.app[PAYLOAD_SLOT]
    try:
        async with asyncio.timeout(PAYLOAD_WAIT_SECONDS):
            await slot.acquire()
    except TimeoutError:
        raise _Refused(429, "another payload is being received; try again shortly") from None
    try:
        try:
            async with asyncio.timeout(PAYLOAD_READ_SECONDS):
                raw = await request.read()
        except TimeoutError:
            raise _Refused(408, f"the payload did not arrive within {PAYLOAD_READ_SECONDS:.0f} s") from None
        try:
            body = json.loads(raw)
        except ValueError:
            raise _Refused(400, "the body is not JSON") from None
        del raw
        _pinned_is_409(ukey, body)
    finally:
        slot.release()
    return {}


async def _vkey(agent: KeylimeAgent, request: web.Request) -> dict[str, Any]:
    """200 only when the V combined (or is the pinned one again); one that combines with no U is 400
    (BootstrapIncomplete), which Keylime's verifier takes as a failed agent rather than a bootstrapped one."""
    _length(request, MAX_VKEY_BODY, "a V key half")
    _pinned_is_409(functools.partial(agent.payloads.vkey, peer=_peer(request)), await _body(request))
    return {}


def _pinned_is_409(half: Callable[[Any], None], body: Any) -> None:
    try:
        half(body)
    except BootstrapPinned as e:
        raise _Refused(409, str(e)) from None


async def _verify(agent: KeylimeAgent, request: web.Request) -> dict[str, Any]:
    digest = agent.payloads.verify(request.query.get("challenge", ""))
    if digest is None:
        raise _Refused(400, "Bootstrap key not yet available.")
    return {"hmac": digest}


async def _pubkey(agent: KeylimeAgent, request: web.Request) -> dict[str, Any]:
    return {"pubkey": agent.keys.payload_pubkey_pem}


async def _info(agent: KeylimeAgent, request: web.Request) -> dict[str, Any]:
    algs = agent.quoter.algs
    return {"agent_uuid": agent.uuid, "tpm_hash_alg": algs["hash_alg"], "tpm_enc_alg": algs["enc_alg"],
            "tpm_sign_alg": algs["sign_alg"], "ak_handle": agent.settings.ak_handle}


async def _revocation(agent: KeylimeAgent, request: web.Request) -> dict[str, Any]:
    if request.content_length is None or request.content_length > MAX_NOTICE:  # the verifier's are a few KB
        raise _Refused(413, f"a revocation notice is at most {MAX_NOTICE} bytes, with a Content-Length")
    try:
        await agent.revocation(await _body(request))
    except ValueError as e:
        raise _Refused(400, str(e)) from None
    return {}


_ROUTES: dict[tuple[str, str], Handler] = {
    ("GET", "quotes/identity"): _identity, ("GET", "quotes/integrity"): _integrity,
    ("POST", "keys/ukey"): _ukey, ("POST", "keys/vkey"): _vkey, ("GET", "keys/verify"): _verify,
    ("GET", "keys/pubkey"): _pubkey, ("GET", "agent/info"): _info,
    ("POST", "notifications/revocation"): _revocation,
}


def build_agent_app(agent: KeylimeAgent) -> web.Application:
    async def version(request: web.Request) -> web.Response:
        return _answer(200, "Success", {"supported_version": SUPPORTED_VERSIONS[-1],
                                        "supported_versions": list(SUPPORTED_VERSIONS)})

    async def dispatch(request: web.Request) -> web.Response:
        if not request.transport or not request.transport.get_extra_info("peercert"):
            return _answer(403, "a client certificate is required")  # the TLS context already demands one
        ver = request.match_info["version"]
        if ver not in SUPPORTED_VERSIONS:
            return _answer(400, f"API version not supported: v{ver}")  # the verifier renegotiates on this text
        handler = _ROUTES.get((request.method, request.match_info["rest"]))
        if handler is None:
            return _answer(404, "URI not supported")
        try:
            return _answer(200, "Success", await handler(agent, request))
        except _Refused as e:
            return _answer(e.code, e.status)
        except (BadQuoteRequest, PayloadError) as e:
            return _answer(400, str(e))
        except QuoteDeferred as e:  # never 503: the verifier stops polling a device for good on that
            response = _answer(e.status, str(e))
            if e.retry_after is not None:
                response.headers["Retry-After"] = str(max(1, math.ceil(e.retry_after)))
            return response
        except web.HTTPRequestEntityTooLarge:
            return _answer(413, "body too large")
        except Exception as e:
            _INTERNAL_ERRORS.log(request, e)
            return _answer(500, "internal error (see the Edgeward log)")

    app = web.Application(client_max_size=MAX_UKEY_BODY)
    app[PAYLOAD_SLOT] = asyncio.Semaphore(1)
    app.router.add_get("/version", version)
    app.router.add_route("*", r"/v{version}/{rest:.+}", dispatch)
    return app
