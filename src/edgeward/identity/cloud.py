"""How the identity service reaches the cloud (DPS, IoT Hub) over HTTPS, in one of two ways:

- :class:`HttpsTransport`: server-authenticated TLS (aiohttp + :mod:`ssl`); the device proves itself with a SAS
  token in ``Authorization`` (a symmetric key in the keys service, or the TPM's authentication key).
- :class:`X509Transport`: mutual TLS whose client key never leaves the keys service (any backend), on the
  tlslite-ng transport the EST client uses (:class:`~edgeward.certs.est.keys_tls.KeysTlsTransport`); :mod:`ssl`
  can only sign with a key it can read from a file.

Both answer ``(status, headers, body)`` and turn "no answer at all" into a :class:`~edgeward.identity.hub.HubError`
without a cloud status, which the service treats as transient (retried with backoff).

Every call is bounded as aziot-identityd bounds it (``cloud_timeout_sec``, ``cloud_retries``): each attempt, from
connect to the last byte of the answer, gets ``timeout`` seconds; an attempt that got no answer (refused, TLS
failure, timeout) is tried again up to ``retries`` more times, :data:`RETRY_DELAY` apart. An answer, whatever its
status, is never retried here: throttling and outages are the service's backoff's business.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..certs.est.pkcs7 import EstError
from ..certs.est.tls_identity import KeysIdentity
from ..http.answers import read_capped
from ..http.errors import HttpError
from ..repeat_log import RepeatLog
from .unreachable import Unreachable

__all__ = ["MAX_RESPONSE", "RETRY_DELAY", "CloudTransport", "HttpsTransport", "OversizedAnswer", "Unreachable",
           "X509Transport"]

log = logging.getLogger(__name__)
# every request that reaches the cloud during an outage would write this line (any principal asking for its
# identity in a loop): the first per peer an interval, the rest counted
_RETRY_LOG = RepeatLog(log, "cloud attempt failed, trying again", level=logging.WARNING)

MAX_RESPONSE = 1024 * 1024  # far above any DPS or registry answer (a module list of a full device is ~100 KB)
RETRY_DELAY = 3.0  # seconds between attempts that got no answer, as aziot's http-common waits


class OversizedAnswer(HttpError):
    """The cloud answered with more than :data:`MAX_RESPONSE` bytes: refused whole, never cut to what fits (a
    truncated JSON document would read as "no answer" or, worse, as a shorter list)."""

    status = 502


class CloudTransport(Protocol):
    async def send(self, method: str, url: str, headers: Mapping[str, str],
                   body: bytes | None) -> tuple[int, Mapping[str, str], bytes]: ...


Answer = tuple[int, Mapping[str, str], bytes]


async def _bounded(attempt: Callable[[], Awaitable[Answer]], timeout: float, retries: int, peer: str,
                   where: str) -> Answer:
    """``attempt`` within ``timeout`` seconds each, tried ``1 + retries`` times while it gets no answer."""
    tries = 1 + max(0, retries)
    for n in range(1, tries + 1):
        try:
            async with asyncio.timeout(timeout):
                return await attempt()
        except TimeoutError:
            error = Unreachable(f"the {peer} at {where} did not answer within {timeout:g}s (cloud_timeout_sec)")
        except Unreachable as e:
            error = e
        if n == tries:
            if tries > 1:
                raise Unreachable(f"{error.message} (after {tries} attempts; cloud_retries = {retries})") from error
            raise error
        _RETRY_LOG.log(peer, "%s (attempt %d of %d); trying again in %gs", error.message, n, tries,
                       RETRY_DELAY)
        await asyncio.sleep(RETRY_DELAY)
    raise AssertionError("unreachable")  # the loop returns or raises


def _ssl_context(trusted: Sequence[x509.Certificate] | None) -> ssl.SSLContext:
    if trusted is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cadata="".join(
        c.public_bytes(serialization.Encoding.PEM).decode() for c in trusted))


class HttpsTransport:
    """One aiohttp request per call (the identity service talks to the cloud rarely; no pool to go stale)."""

    def __init__(self, trusted: Sequence[x509.Certificate] | None, timeout: float, peer: str,
                 retries: int = 0, trust_source: str | None = None) -> None:
        """``peer`` names the service in messages ("DPS", "IoT Hub"); ``trust_source`` names the setting whose CAs
        ``trusted`` holds, for the message when the server's certificate chains to none of them."""
        self._ssl = _ssl_context(trusted)
        self._trust_source = trust_source or ("the system's CA certificates" if trusted is None else
                                              "[edgeward.identity] cloud_trust_bundle")
        self._seconds = timeout
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retries = retries
        self.peer = peer

    async def send(self, method: str, url: str, headers: Mapping[str, str],
                   body: bytes | None) -> tuple[int, Mapping[str, str], bytes]:
        return await _bounded(lambda: self._send(method, url, headers, body), self._seconds, self._retries,
                              self.peer, urlsplit(url).netloc)

    async def _send(self, method: str, url: str, headers: Mapping[str, str],
                    body: bytes | None) -> tuple[int, Mapping[str, str], bytes]:
        try:
            async with aiohttp.ClientSession(timeout=self._timeout) as session, session.request(
                method, url, data=body, headers=dict(headers), ssl=self._ssl, allow_redirects=False,
            ) as resp:
                raw = await self._read_all(resp, method, url)
                return resp.status, resp.headers.copy(), raw  # case-insensitive, like the X.509 path
        except aiohttp.ClientConnectorCertificateError as e:
            where = urlsplit(url).netloc
            raise Unreachable(f"the {self.peer} at {where} presented a TLS certificate that is not trusted: it does "
                              f"not chain to a CA of {self._trust_source} ({e.certificate_error})") from e
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            where = urlsplit(url).netloc
            raise Unreachable(f"the {self.peer} at {where} is unreachable: {e or type(e).__name__}") from e


    async def _read_all(self, resp: aiohttp.ClientResponse, method: str, url: str) -> bytes:
        def oversized() -> OversizedAnswer:
            return OversizedAnswer(f"the {self.peer} answered {method} {url} with more than {MAX_RESPONSE} bytes "
                                   f"(the cap on a cloud answer); refused")

        return await read_capped(resp, MAX_RESPONSE, oversized)


class X509Transport:
    """Mutual TLS with a :class:`KeysIdentity` (certificate chain + key handle in the keys service)."""

    def __init__(self, identity: KeysIdentity, trusted: Sequence[x509.Certificate] | None, timeout: float,
                 peer: str, retries: int = 0) -> None:
        self.peer = peer
        self._timeout = timeout
        self._retries = retries
        from ..certs.est.keys_tls import KeysTlsTransport  # noqa: PLC0415 -- tlslite only for X.509 devices

        try:
            self._tls = KeysTlsTransport(identity, trusted, peer=peer)
        except EstError as e:
            raise HttpError(e.message, status=500) from e

    async def send(self, method: str, url: str, headers: Mapping[str, str],
                   body: bytes | None) -> tuple[int, Mapping[str, str], bytes]:
        return await _bounded(lambda: self._send(method, url, headers, body), self._timeout, self._retries,
                              self.peer, urlsplit(url).netloc)

    async def _send(self, method: str, url: str, headers: Mapping[str, str],
                    body: bytes | None) -> tuple[int, Mapping[str, str], bytes]:
        try:
            return await self._tls.send(method, url, headers, body, timeout=self._timeout,
                                        max_bytes=MAX_RESPONSE + 1)
        except EstError as e:
            if e.status is not None:  # it answered, with more than any answer of the API can be
                raise HttpError(e.message, status=502) from e
            raise Unreachable(e.message) from e
