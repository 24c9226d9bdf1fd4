"""An RFC 7030 EST client: CA certificates, enrollment and re-enrollment over (mutual) TLS.

The base URL is the whole ``https://host[:port]/.well-known/est[/<label>]`` prefix, as aziot-certd configures EST
URLs; operation names are appended to it. The server is verified against the configured trust anchors only: the
process environment (``SSL_CERT_FILE``, ``REQUESTS_CA_BUNDLE``) must not widen who may issue device identities.

Two transports carry the requests: aiohttp over :mod:`ssl` for a client key in a file (:class:`ClientIdentity`) or no
client certificate, and tlslite-ng (:mod:`.keys_tls`) for a client key held by the keys service
(:class:`~edgeward.certs.est.keys_tls.KeysIdentity`), which OpenSSL cannot sign with.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from ...digits import is_number
from ...http.answers import read_capped
from .pkcs7 import EstError, decode_base64_body, order_chain, parse_certificates
from .tls_identity import KeysIdentity

if TYPE_CHECKING:
    from .keys_tls import KeysTlsTransport

__all__ = ["ClientIdentity", "EstClient", "build_ssl_context"]

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 1 << 20  # a certificate bundle is a few kB; more is a misbehaving server
_MAX_SERVER_TEXT = 300
_MIN_RETRY_AFTER = 1.0  # a "Retry-After: 0" must not turn into a tight polling loop
_PKCS7 = "application/pkcs7-mime"


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """The certificate (chain, leaf first, PEM) and private key the client presents for TLS client authentication.

    ``key_pem_path`` names an unencrypted PEM private key file; ``None`` means ``cert_chain_pem`` holds the key too.
    OpenSSL (through :mod:`ssl`) can only use a key it can read; for a key that stays in the keys service (HSM, TPM),
    use :class:`~edgeward.certs.est.keys_tls.KeysIdentity` instead.
    """

    cert_chain_pem: bytes = field(repr=False)
    key_pem_path: Path | None = None


class EstClient:
    """One EST server and its trust configuration. Every failure is an :class:`EstError`.

    ``trusted_certs`` are the only anchors the server's certificate may chain to; ``None`` means the system's
    defaults, for public EST services. ``username``/``password`` enable HTTP basic auth. A 202 answer (the CA is still
    deciding) is retried after the server's ``Retry-After``, for at most ``max_retry_after`` seconds in total.

    ``client_identity`` is a :class:`ClientIdentity` (key in a file, TLS by :mod:`ssl`) or a :class:`KeysIdentity`
    (key in the keys service: every request then goes over tlslite-ng, TLS 1.2 or 1.3, with the key service signing
    the handshake); the server is verified against the same trust either way.
    """

    def __init__(  # noqa: PLR0917 - the agreed constructor; the certs service passes url, trust and auth positionally
        self,
        base_url: str,
        trusted_certs: Sequence[x509.Certificate] | None,
        username: str | None = None,
        password: str | None = None,
        client_identity: ClientIdentity | KeysIdentity | None = None,
        timeout: float = 30.0,
        max_retry_after: float = 300.0,
    ) -> None:
        self.base_url = _checked_base_url(base_url)
        self.username = username
        # The encoded header is as secret as the password: kept private, never in repr or logs.
        self._authorization = None if username is None else aiohttp.encode_basic_auth(username, password or "")
        self._has_identity = client_identity is not None
        self.timeout = timeout
        self.max_retry_after = max_retry_after
        self._keys_tls: KeysTlsTransport | None = None
        self._ssl: ssl.SSLContext | None = None
        if isinstance(client_identity, KeysIdentity):
            from .keys_tls import KeysTlsTransport  # noqa: PLC0415 -- tlslite only when a keyd identity is used

            self._keys_tls = KeysTlsTransport(client_identity, trusted_certs)
        else:
            self._ssl = build_ssl_context(trusted_certs, client_identity)

    def __repr__(self) -> str:
        # Never the password; the username helps tell two configured EST servers apart.
        return f"EstClient(base_url={self.base_url!r}, username={self.username!r})"

    # ------------------------------------------------------------------ operations (RFC 7030 section 4)
    async def cacerts(self) -> list[x509.Certificate]:
        """The EST CA's certificates (``GET /cacerts``), chain-ordered: the issuing CA first."""
        body = await self._exchange("GET", "cacerts", accept=_PKCS7)
        return order_chain(parse_certificates(body))

    async def simple_enroll(self, csr_der: bytes) -> list[x509.Certificate]:
        """Enroll a DER PKCS#10 CSR (``POST /simpleenroll``); the issued certificate first, then any chain sent."""
        return await self._enroll("simpleenroll", csr_der)

    async def simple_reenroll(self, csr_der: bytes) -> list[x509.Certificate]:
        """Renew (``POST /simplereenroll``): the server authenticates the client with the certificate being renewed,
        so this client should carry it as its ``client_identity``."""
        return await self._enroll("simplereenroll", csr_der)

    async def csrattrs(self) -> bytes | None:
        """The DER ``CsrAttrs`` the server wants in CSRs (``GET /csrattrs``), or ``None`` when it has no opinion."""
        body = (await self._exchange("GET", "csrattrs", accept="application/csrattrs", absent_ok=True)).strip()
        if not body:
            return None
        return body if body[0] == 0x30 else decode_base64_body(body)

    # ------------------------------------------------------------------ lifecycle
    async def close(self) -> None:
        """Nothing to release: each operation opens and closes its own connection (EST calls are rare, and a client
        its owner forgets to close must not leak sockets). Kept so the client can be used as a context manager."""

    async def __aenter__(self) -> EstClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ plumbing
    async def _enroll(self, operation: str, csr_der: bytes) -> list[x509.Certificate]:
        # One line of base64, as aziot-certd sends it: every server aziot works with accepts that form.
        body = await self._exchange(
            "POST",
            operation,
            accept=_PKCS7,
            data=base64.b64encode(csr_der),
            headers={"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "base64"},
        )
        return order_chain(parse_certificates(body), _csr_key(csr_der))

    async def _exchange(
        self,
        method: str,
        operation: str,
        *,
        accept: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        absent_ok: bool = False,
    ) -> bytes:
        """The 2xx body, after waiting out any 202s. ``absent_ok`` turns 204/404 into an empty body, for optional
        resources such as ``csrattrs``."""
        url = f"{self.base_url}/{operation}"
        request_headers = {"Accept": accept, **(headers or {})}
        if self._authorization is not None:
            request_headers["Authorization"] = self._authorization
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_retry_after
        attempt = 0
        while True:
            attempt += 1
            status, reply_headers, body = await self._send(method, url, request_headers, data)
            log.debug("EST %s %s -> %d (attempt %d)", method, url, status, attempt)
            if status == 202:
                wait = _retry_after(reply_headers.get("Retry-After"), url)
                remaining = deadline - loop.time()
                if wait > remaining:
                    raise EstError(
                        f"EST server at {url} is still processing the request and asks to retry in {wait:.0f} s, "
                        f"beyond the {self.max_retry_after:.0f} s allowed for waiting (max_retry_after)",
                        status,
                    )
                log.info("EST server at %s accepted the request for later; retrying in %.0f s", url, wait)
                await asyncio.sleep(wait)  # cancellation ends the wait and the exchange
                continue
            if absent_ok and status in (204, 404):
                return b""
            if 200 <= status < 300:
                return body
            raise self._refusal(url, status, reply_headers, body)

    async def _send(
        self, method: str, url: str, headers: dict[str, str], data: bytes | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        if self._keys_tls is not None:
            return await self._keys_tls.send(
                method, url, headers, data, timeout=self.timeout, max_bytes=MAX_RESPONSE_BYTES
            )
        try:
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl or True)) as session,
                session.request(
                    method,
                    url,
                    data=data,
                    headers=headers,
                    allow_redirects=False,  # an EST URL that moved is configuration to fix, not a hop to take blindly
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as resp,
            ):
                body = await _read_capped(resp, url)
                return resp.status, resp.headers, body
        except aiohttp.ClientConnectorCertificateError as e:
            raise EstError(
                f"TLS verification of the EST server at {url} failed ({_describe_tls(e.certificate_error)}); "
                "check that the configured trusted certificates include the CA that issued its certificate",
            ) from e
        except aiohttp.ClientSSLError as e:
            raise EstError(
                f"TLS handshake with the EST server at {url} failed ({_describe_tls(e)}){self._hint()}"
            ) from e
        except aiohttp.ClientConnectorError as e:
            raise EstError(f"could not connect to the EST server at {url} ({_describe_tls(e.os_error)})") from e
        except TimeoutError as e:
            raise EstError(f"the EST server at {url} did not answer within {self.timeout:g} s") from e
        except (aiohttp.ClientError, OSError) as e:
            raise EstError(f"could not talk to the EST server at {url} ({_describe_tls(e)}){self._hint()}") from e

    def _hint(self) -> str:
        if self._has_identity:
            return ""
        return "; if the server requires TLS client authentication, configure a client certificate"

    def _refusal(self, url: str, status: int, headers: Mapping[str, str], body: bytes) -> EstError:
        text = _server_text(body)
        said = f": {text}" if text else ""
        if status == 401:
            what = "refused the configured credentials" if self._authorization else "requires authentication"
            hint = (
                "check the EST username and password"
                if self._authorization
                else "configure an EST username and password"
            )
            if not self._has_identity:
                hint += " or a client certificate"
            return EstError(f"EST server at {url} {what} (401){said}; {hint}", status)
        if 300 <= status < 400:
            where = headers.get("Location", "another URL")
            return EstError(f"EST server at {url} redirects to {where} ({status}); configure that URL instead", status)
        return EstError(f"EST server at {url} answered {status}{said}", status)


def build_ssl_context(
    trusted_certs: Sequence[x509.Certificate] | None, identity: ClientIdentity | None = None
) -> ssl.SSLContext:
    """A client TLS context trusting exactly ``trusted_certs`` (or the system defaults for ``None``), with the
    client identity loaded. Hostname checking stays on: the URL's host must be in the server certificate."""
    if trusted_certs is None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:
        if not trusted_certs:
            raise EstError("no trusted certificates configured for the EST server; give at least one CA certificate")
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in trusted_certs).decode("ascii")
        # With cadata, create_default_context loads nothing else: no system store, no SSL_CERT_FILE.
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=pem)
    if identity is not None:
        try:
            with _pem_file(identity.cert_chain_pem) as chain:
                context.load_cert_chain(chain, str(identity.key_pem_path) if identity.key_pem_path else None)
        except (OSError, ssl.SSLError) as e:
            where = f" with the key in {identity.key_pem_path}" if identity.key_pem_path else ""
            raise EstError(f"cannot load the EST client certificate{where} ({_describe_tls(e)})") from e
    return context


@contextlib.contextmanager
def _pem_file(data: bytes) -> Iterator[str]:
    """A path ``ssl`` can read ``data`` from. ``load_cert_chain`` takes paths only; an anonymous memory file keeps a
    combined cert+key PEM off the disk, and a private temporary file is the fallback where memfd is missing."""
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fd = os.memfd_create("edgeward-est-identity", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="edgeward-est-", suffix=".pem")  # mode 0600
    try:
        os.write(fd, data)
        os.close(fd)
        yield path
    finally:
        Path(path).unlink(missing_ok=True)


def _checked_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme != "https" or not parts.hostname:
        raise EstError(f"EST URL {base_url!r} must be an https:// URL (RFC 7030 requires TLS)")
    if parts.username is not None or parts.password is not None:
        raise EstError("EST URL must not carry credentials; configure the EST username and password instead")
    if parts.query or parts.fragment:
        raise EstError(f"EST URL {base_url!r} must not have a query or fragment")
    return base_url.rstrip("/")


def _retry_after(value: str | None, url: str) -> float:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date (RFC 9110 section 10.2.3)."""
    if value is None or not value.strip():
        raise EstError(f"EST server at {url} answered 202 without a Retry-After header (RFC 7030 requires one)", 202)
    value = value.strip()
    if is_number(value):
        return max(float(value), _MIN_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError) as e:
        raise EstError(f"EST server at {url} answered 202 with an unreadable Retry-After {value[:40]!r}", 202) from e
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.fromtimestamp(time.time(), UTC)).total_seconds(), _MIN_RETRY_AFTER)


async def _read_capped(resp: aiohttp.ClientResponse, url: str) -> bytes:
    return await read_capped(resp, MAX_RESPONSE_BYTES, lambda: EstError(
        f"the EST server at {url} sent more than {MAX_RESPONSE_BYTES} bytes", resp.status))


def _csr_key(csr_der: bytes) -> PublicKeyTypes | None:
    """The public key the issued certificate must carry; ``None`` when the CSR is unreadable here (the server judged
    it, and it accepted it)."""
    try:
        return x509.load_der_x509_csr(csr_der).public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


def _server_text(body: bytes) -> str:
    """The server's explanation, made safe for a log line: printable, one line, truncated."""
    text = body.decode("utf-8", errors="replace")
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return text if len(text) <= _MAX_SERVER_TEXT else text[: _MAX_SERVER_TEXT - 3] + "..."


def _describe_tls(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
