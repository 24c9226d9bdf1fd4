"""EST over TLS with a client key that never leaves the keys service (software, PKCS#11 or TPM backend).

:mod:`ssl` (OpenSSL) signs only with a key it can read from a file, so mutual TLS with an HSM- or TPM-held identity
runs on tlslite-ng, a pure-Python TLS 1.2/1.3 implementation whose handshake takes any object with the right signing
methods. :class:`_KeysServiceKey` is that object: tlslite hands it the digest (or PKCS#1 ``DigestInfo``) the
CertificateVerify message must sign, and it forwards that to the keys service through :class:`KeysApi`.

The handshake is synchronous, so each request runs in a worker thread; the thread calls the async keys API back on
the event loop (``run_coroutine_threadsafe``). tlslite does no X.509 path validation: the server's chain is checked
here (:func:`_verify_server_chain`) as soon as its Certificate message arrives, before the client key signs
anything or any request (basic-auth credentials included) is sent.

The HTTP semantics (202 + Retry-After, status mapping, messages) stay in :class:`~edgeward.certs.est.EstClient`;
this module only moves one request and its response over the wire, and turns failures into :class:`EstError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import ipaddress
import logging
import socket
import ssl
import threading
import warnings
from collections.abc import Coroutine, Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import ExtendedKeyUsageOID
from ecdsa import curves as ecdsa_curves  # type: ignore[import-untyped]  # tlslite's own dependency
from multidict import CIMultiDict, CIMultiDictProxy

from ...keys.model import EcdsaDigest, HashAlg, PublicKey, RsaPkcs1, RsaPss
from ..x509sign import handle_public_key, same_public_key
from .pkcs7 import EstError
from .tls_identity import KeysIdentity

with warnings.catch_warnings():  # tlslite's package __init__ imports its asyncore integration (deprecated in 3.11)
    warnings.filterwarnings("ignore", "The asyncore module is deprecated", DeprecationWarning)
    from tlslite.constants import AlertDescription  # type: ignore[import-untyped]
    from tlslite.errors import (  # type: ignore[import-untyped]
        TLSAbruptCloseError,
        TLSAuthenticationError,
        TLSError,
        TLSLocalAlert,
        TLSRemoteAlert,
    )
    from tlslite.handshakesettings import HandshakeSettings  # type: ignore[import-untyped]
    from tlslite.tlsconnection import TLSConnection  # type: ignore[import-untyped]
    from tlslite.x509 import X509  # type: ignore[import-untyped]
    from tlslite.x509certchain import X509CertChain  # type: ignore[import-untyped]

__all__ = ["KeysIdentity", "KeysTlsTransport"]

log = logging.getLogger(__name__)

_MAX_CHAIN_DEPTH = 8
_CHUNK = 64 * 1024
# ECDSA: tlslite's TLS 1.2 code truncates the digest to the curve's byte length and reads that length from the
# (python-ecdsa) private key object; the curve's own hash goes first so the signature is the conventional one.
_EC_CURVES = {
    "secp256r1": (ecdsa_curves.NIST256p, ["sha256", "sha384", "sha512"]),
    "secp384r1": (ecdsa_curves.NIST384p, ["sha384", "sha512", "sha256"]),
}
_HASH_BY_NAME = {"sha256": HashAlg.SHA256, "sha384": HashAlg.SHA384, "sha512": HashAlg.SHA512}
_PREHASHED_BY_LENGTH: dict[int, hashes.HashAlgorithm] = {
    32: hashes.SHA256(),
    48: hashes.SHA384(),
    64: hashes.SHA512(),
}
_CERT_ALERTS = frozenset(
    {
        AlertDescription.bad_certificate,
        AlertDescription.unsupported_certificate,
        AlertDescription.certificate_revoked,
        AlertDescription.certificate_expired,
        AlertDescription.certificate_unknown,
        AlertDescription.unknown_ca,
        AlertDescription.access_denied,
        AlertDescription.certificate_required,
    }
)


@dataclass(frozen=True, slots=True)
class _Rejection:
    """Why the server's certificate is refused, the TLS alert that says so, and what the operator should check."""

    reason: str
    alert: int
    hint: str = "check that the configured trusted certificates include the CA that issued its certificate"


class _SigningFailed(Exception):
    """The keys service did not sign the handshake; raised through tlslite back to the transport."""


class KeysTlsTransport:
    """Moves one EST request and its response over TLS (1.2 or 1.3) authenticated with a :class:`KeysIdentity`.

    ``trusted_certs`` are the only anchors the server's certificate may chain to; ``None`` means the system's CA
    file (what :func:`ssl.create_default_context` loads). ``peer`` names the server in error messages.
    """

    def __init__(self, identity: KeysIdentity, trusted_certs: Sequence[x509.Certificate] | None,
                 peer: str = "EST server") -> None:
        self.peer = peer  # how messages name the server: the same transport also reaches DPS and IoT Hub
        if not identity.cert_chain:
            raise EstError("the EST client identity has no certificate; give the leaf certificate (and its chain)")
        if trusted_certs is None:
            anchors = _system_anchors()
        elif not trusted_certs:
            raise EstError("no trusted certificates configured for the EST server; give at least one CA certificate")
        else:
            anchors = list(trusted_certs)
        self.identity = identity
        self._anchors = anchors
        self._leaf_public: PublicKey | None = None

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        data: bytes | None,
        *,
        timeout: float,
        max_bytes: int,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """(status, headers, body) of one request; every failure is an :class:`EstError` naming ``url``."""
        public = await self._identity_key()
        try:
            port = urlsplit(url).port or 443
        except ValueError as e:
            raise EstError(f"EST URL {url!r} has an invalid port") from e
        exchange = _Exchange(
            url=url,
            port=port,
            method=method,
            headers=dict(headers),
            data=data,
            timeout=timeout,
            max_bytes=max_bytes,
            anchors=self._anchors,
            cert_chain=self.identity.cert_chain,
            key=_KeysServiceKey(self.identity, public, asyncio.get_running_loop(), timeout),
            peer=self.peer,
        )
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.to_thread(exchange.run)
        except TimeoutError as e:
            raise EstError(f"the {self.peer} at {url} did not answer within {timeout:g} s") from e
        finally:
            exchange.abort()  # a no-op when it completed; otherwise it unblocks the thread so it ends now

    async def _identity_key(self) -> PublicKey:
        """The leaf's public key, once checked to be the key behind the handle: a mismatch would otherwise surface as
        an opaque handshake failure on the server side."""
        if self._leaf_public is not None:
            return self._leaf_public
        leaf = self.identity.cert_chain[0]
        public = leaf.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) or (
            isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name not in _EC_CURVES
        ):
            raise EstError(
                "the EST client certificate's key is not supported for TLS through the keys service "
                "(expected an EC P-256/P-384 or RSA key)"
            )
        try:
            held = await handle_public_key(self.identity.keys, self.identity.key_handle)
        except Exception as e:
            raise EstError(f"the keys service cannot read the EST client key ({_describe(e)})") from e
        if not same_public_key(public, held):
            raise EstError(
                f"the EST client certificate ({leaf.subject.rfc4514_string()}) is not for the key behind the "
                "configured key handle"
            )
        self._leaf_public = public
        return public


class _KeysServiceKey:
    """A TLS client private key as tlslite's client handshake uses it, with every private operation done by the keys
    service. tlslite reads ``key_type``, ``n`` (RSA) or ``private_key.curve.baselen`` (ECDSA, TLS 1.2), calls
    :meth:`sign` for CertificateVerify and then :meth:`verify` on the result; nothing else."""

    def __init__(
        self, identity: KeysIdentity, public: PublicKey, loop: asyncio.AbstractEventLoop, timeout: float
    ) -> None:
        self._identity = identity
        self._public = public
        self._loop = loop
        self._timeout = timeout
        if isinstance(public, ec.EllipticCurvePublicKey):
            self.key_type = "ecdsa"
            self.private_key = _CurveOnly(_EC_CURVES[public.curve.name][0])
            self.ecdsa_hashes = list(_EC_CURVES[public.curve.name][1])
        else:
            self.key_type = "rsa"
            self.ecdsa_hashes = ["sha256", "sha384", "sha512"]
            self.n = public.public_numbers().n
            self.e = public.public_numbers().e

    def __len__(self) -> int:
        return self._public.key_size

    def hasPrivateKey(self) -> bool:
        return True

    def sign(
        self, data: bytearray, padding: str | None = None, hashAlg: str | None = None, saltLen: int | None = None
    ) -> bytearray:
        """``data`` is the digest to sign (ECDSA, RSA-PSS) or the PKCS#1 ``DigestInfo`` (RSA PKCS#1 v1.5)."""
        keys, handle = self._identity.keys, self._identity.key_handle
        if isinstance(self._public, ec.EllipticCurvePublicKey):
            return bytearray(self._call(keys.sign(handle, EcdsaDigest(bytes(data)))))
        if padding == "pss":
            hash_alg = _HASH_BY_NAME.get(hashAlg or "")
            if hash_alg is None or saltLen != len(data):
                # the keys service signs PSS with the salt as long as the digest, as TLS 1.3 requires
                raise _SigningFailed(f"unsupported RSA-PSS parameters (hash {hashAlg}, salt length {saltLen})")
            return bytearray(self._call(keys.sign(handle, RsaPss(bytes(data), prehashed=True, hash=hash_alg))))
        if padding == "pkcs1":
            return bytearray(self._call(keys.encrypt(handle, RsaPkcs1(), bytes(data))))
        raise _SigningFailed(f"unsupported RSA padding {padding!r}")

    def verify(
        self,
        signature: bytearray,
        data: bytearray,
        padding: str | None = None,
        hashAlg: str | None = None,
        saltLen: int | None = None,
    ) -> bool:
        """Whether the keys service's signature holds for the certificate's public key: a key swapped behind the
        handle, or a faulty HSM, fails here rather than at the server."""
        return _signature_holds(
            self._public, bytes(signature), bytes(data), pad=padding, hash_name=hashAlg, salt=saltLen
        )

    def _call(self, coroutine: Coroutine[Any, Any, bytes]) -> bytes:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(self._timeout)
        except TimeoutError as e:
            future.cancel()
            raise _SigningFailed(f"no signature within {self._timeout:g} s") from e
        except Exception as e:
            raise _SigningFailed(_describe(e)) from e


@dataclass(frozen=True, slots=True)
class _CurveOnly:
    """Stands where tlslite expects a python-ecdsa private key, for the one attribute it reads (``curve.baselen``)."""

    curve: Any


class _VerifyingTLSConnection(TLSConnection):  # type: ignore[misc]  # tlslite is untyped
    """A tlslite client connection that checks the server's chain the moment it arrives (tlslite's hook for the
    server Certificate message, on both the TLS 1.2 and 1.3 paths), so a server that fails verification gets an
    alert before the client signs or sends anything. The post-handshake checker re-checks if the hook never ran."""

    def __init__(self, sock: socket.socket, anchors: Sequence[x509.Certificate], host: str) -> None:
        super().__init__(sock)
        self._anchors = anchors
        self._host = host
        self.server_verified = False
        self.rejection: _Rejection | None = None

    def verify_server(self, chain: Any) -> _Rejection | None:
        ders = [bytes(c.bytes) for c in chain.x509List] if chain is not None else []
        if ders:
            self.rejection = _verify_server_chain(ders, self._anchors, self._host, datetime.now(UTC))
        else:
            self.rejection = _Rejection("the server presented no certificate", AlertDescription.certificate_required)
        self.server_verified = self.rejection is None
        return self.rejection

    def _clientGetKeyFromChain(  # overrides tlslite's hook
        self, certificate: Any, settings: Any, tack_ext: Any = None
    ) -> Generator[Any, None, None]:
        rejection = self.verify_server(certificate.cert_chain)
        if rejection is not None:
            yield from self._sendError(rejection.alert, rejection.reason)
        yield from super()._clientGetKeyFromChain(certificate, settings, tack_ext)

    def check_after_handshake(self, _connection: Any) -> None:
        """tlslite's post-handshake checker: fails closed if the early check did not run or did not pass."""
        if self.server_verified:
            return
        rejection = self.verify_server(self.session.serverCertChain if self.session else None)
        if rejection is not None:
            raise TLSAuthenticationError(rejection.reason)

    def makefile(self, mode: str = "r", bufsize: int = -1) -> Any:
        # tlslite hands http.client an unbuffered reader, which reads the status line and headers a byte at a time
        raw = super().makefile(mode, bufsize)
        return io.BufferedReader(raw, _CHUNK) if "r" in mode else raw


class _Exchange:
    """One request over one TLS connection, run in a worker thread; :meth:`abort` (from any thread) ends it."""

    def __init__(
        self,
        *,
        url: str,
        port: int,
        method: str,
        headers: dict[str, str],
        data: bytes | None,
        timeout: float,
        max_bytes: int,
        anchors: Sequence[x509.Certificate],
        cert_chain: Sequence[x509.Certificate],
        key: _KeysServiceKey,
        peer: str = "EST server",
    ) -> None:
        parts = urlsplit(url)
        self.peer = peer
        self.url = url
        self.host = parts.hostname or ""
        self.port = port
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")  # DPS/IoT Hub: api-version
        self.method = method
        self.headers = headers
        self.data = data
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.anchors = anchors
        self.cert_chain = X509CertChain([_tlslite_cert(c) for c in cert_chain])
        self.key = key
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._aborted = False
        self.answered = False  # the server's HTTP status line arrived

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def run(self) -> tuple[int, Mapping[str, str], bytes]:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except TimeoutError as e:
            raise EstError(f"the {self.peer} at {self.url} did not answer within {self.timeout:g} s") from e
        except OSError as e:
            raise EstError(f"could not connect to the {self.peer} at {self.url} ({_describe(e)})") from e
        # tlslite writes the handshake's last flight and the request as separate small sends: with Nagle on, the
        # second waits for the server's delayed ACK (40 ms on Linux) on every request.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._aborted:
                sock.close()
                raise EstError(f"the request to the {self.peer} at {self.url} was abandoned")
            self._sock = sock
        connection = _VerifyingTLSConnection(sock, self.anchors, self.host)
        try:
            return self._over(connection)
        except EstError:
            raise
        except _SigningFailed as e:
            raise EstError(
                f"the keys service could not sign the TLS handshake with the {self.peer} at {self.url} ({e})"
            ) from e
        except TLSLocalAlert as e:
            if connection.rejection is not None:
                raise self._verification_failed(connection.rejection) from e
            raise EstError(f"TLS handshake with the {self.peer} at {self.url} failed ({_describe(e)})") from e
        except TLSAuthenticationError as e:
            raise self._verification_failed(connection.rejection or _Rejection(_describe(e), 0)) from e
        except TLSRemoteAlert as e:
            hint = ""
            if e.description in _CERT_ALERTS:
                hint = "; the server did not accept the EST client certificate"
            raise EstError(
                f"TLS handshake with the {self.peer} at {self.url} failed (the server sent alert {e}){hint}"
            ) from e
        except TimeoutError as e:
            raise EstError(f"the {self.peer} at {self.url} did not answer within {self.timeout:g} s") from e
        except (TLSAbruptCloseError, ConnectionResetError, BrokenPipeError) as e:
            if self.answered:
                raise EstError(
                    f"the {self.peer} at {self.url} closed the connection mid-answer ({_describe(e)})"
                ) from e
            # A server refusing the client certificate sends an alert and closes at once; the reset that follows
            # usually discards the alert before it is read, in TLS 1.3 even after the client's handshake ended.
            raise EstError(
                f"TLS handshake with the {self.peer} at {self.url} failed (the server closed the connection before "
                f"answering: {_describe(e)}); check that the server trusts the CA of the client certificate"
            ) from e
        except (TLSError, http.client.HTTPException, OSError, ValueError) as e:
            raise EstError(f"could not talk to the {self.peer} at {self.url} ({_describe(e)})") from e
        finally:
            self.abort()

    def _over(self, connection: _VerifyingTLSConnection) -> tuple[int, Mapping[str, str], bytes]:
        settings = _handshake_settings(self.key)
        server_name = None if _ip_or_none(self.host) else self.host
        connection.handshakeClientCert(
            self.cert_chain,
            self.key,
            settings=settings,
            serverName=server_name,
            checker=connection.check_after_handshake,
        )
        log.debug("EST TLS to %s: %s, %s", self.url, connection.getVersionName(), connection.getCipherName())
        client = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        client.sock = connection  # already connected: http.client writes and reads through it
        client.request(self.method, self.target, body=self.data, headers=self.headers)
        response = client.getresponse()
        self.answered = True
        body = self._read_capped(response)
        headers = CIMultiDictProxy(CIMultiDict(response.getheaders()))
        response.close()
        with contextlib.suppress(TLSError, OSError):
            connection.close()  # close_notify; the server's answer is not awaited
        return response.status, headers, body

    def _read_capped(self, response: http.client.HTTPResponse) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while chunk := response.read(_CHUNK):
            size += len(chunk)
            if size > self.max_bytes:
                raise EstError(f"the {self.peer} at {self.url} sent more than {self.max_bytes} bytes", response.status)
            chunks.append(chunk)
        return b"".join(chunks)

    def _verification_failed(self, rejection: _Rejection) -> EstError:
        return EstError(
            f"TLS verification of the {self.peer} at {self.url} failed ({rejection.reason}); {rejection.hint}"
        )


def _tlslite_cert(cert: x509.Certificate) -> Any:
    parsed = X509()
    parsed.parseBinary(cert.public_bytes(serialization.Encoding.DER))
    return parsed


def _handshake_settings(key: _KeysServiceKey) -> Any:
    """TLS 1.2 and 1.3, forward-secret AEAD suites only, no SHA-1/SHA-224 signatures."""
    settings = HandshakeSettings()
    settings.minVersion = (3, 3)
    settings.maxVersion = (3, 4)
    settings.cipherNames = ["aes128gcm", "aes256gcm", "chacha20-poly1305"]
    settings.macNames = ["aead"]
    settings.keyExchangeNames = ["ecdhe_ecdsa", "ecdhe_rsa"]
    settings.rsaSigHashes = ["sha256", "sha384", "sha512"]
    settings.ecdsaSigHashes = key.ecdsa_hashes
    settings.use_heartbeat_extension = False
    # tlslite-ng 0.8 decides whether to compress the client's Certificate (RFC 8879) from its own ClientHello
    # instead of the server's CertificateRequest, so it sends a CompressedCertificate to servers that never asked
    # for one; OpenSSL < 3.2 (Python's ssl here) then aborts TLS 1.3 client auth with unexpected_message.
    settings.certificate_compression_send = []
    settings.certificate_compression_receive = []
    return settings


# ---------------------------------------------------------------------- server certificate verification
def _verify_server_chain(
    ders: Sequence[bytes], anchors: Sequence[x509.Certificate], host: str, now: datetime
) -> _Rejection | None:
    """Why the server's chain (leaf first, as sent) is not acceptable for ``host`` at ``now``; ``None`` if it is.

    The leaf must chain, through CA certificates the server sent, to one of ``anchors`` (each link's signature
    verified), every certificate on the path and the anchor must be within its validity period, the leaf must name
    ``host`` in its subjectAltName (IP or DNS, one leftmost wildcard label allowed) and, when it restricts its
    extended key usage, allow TLS server authentication.
    """
    try:
        chain = [x509.load_der_x509_certificate(der) for der in ders]
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        return _Rejection(
            f"the server sent an unreadable certificate: {_describe(e)}", AlertDescription.bad_certificate
        )
    leaf = chain[0]
    if (expired := _outside_validity(leaf, now, "its certificate")) is not None:
        return expired
    if not _names_host(leaf, host):
        return _Rejection(
            f"its certificate is not valid for {host} (it names {_san_summary(leaf)})",
            AlertDescription.bad_certificate,
            "check the host name in the EST URL",
        )
    if not _allows_server_auth(leaf):
        return _Rejection(
            "its certificate's extended key usage does not allow TLS server authentication",
            AlertDescription.unsupported_certificate,
        )
    return _path_to_anchor(leaf, chain[1:], anchors, now)


def _path_to_anchor(
    leaf: x509.Certificate, presented: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate], now: datetime
) -> _Rejection | None:
    current = leaf
    unused = list(presented)
    for _ in range(_MAX_CHAIN_DEPTH):
        if current in anchors:  # a pinned certificate, trusted as itself
            return None
        issuers = [anchor for anchor in anchors if _issued_by(current, anchor)]
        if issuers:  # several when a CA was re-keyed or renewed: any one that is valid now will do
            problems = [
                _outside_validity(a, now, f"the trusted certificate {a.subject.rfc4514_string()}") for a in issuers
            ]
            return None if None in problems else problems[0]
        issuer = next((c for c in unused if _is_ca(c) and _issued_by(current, c)), None)
        if issuer is None:
            break
        if (expired := _outside_validity(issuer, now, f"its CA {issuer.subject.rfc4514_string()}")) is not None:
            return expired
        unused.remove(issuer)
        current = issuer
    return _Rejection(
        f"its certificate is not issued by any of the trusted certificates "
        f"(the chain ends at {current.subject.rfc4514_string()}, issued by {current.issuer.rfc4514_string()})",
        AlertDescription.unknown_ca,
    )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _outside_validity(cert: x509.Certificate, now: datetime, what: str) -> _Rejection | None:
    if now < cert.not_valid_before_utc:
        return _Rejection(
            f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC; check the clock",
            AlertDescription.bad_certificate,
            "check this device's clock",
        )
    if now > cert.not_valid_after_utc:
        return _Rejection(
            f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
            AlertDescription.certificate_expired,
            "the EST server's certificate must be renewed (or this device's clock is wrong)",
        )
    return None


def _names_host(cert: x509.Certificate, host: str) -> bool:
    """RFC 6125 / RFC 9110 host check against the subjectAltName only (no common-name fallback, as OpenSSL does
    for Python's ssl)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    ip = _ip_or_none(host)
    if ip is not None:
        return ip in san.get_values_for_type(x509.IPAddress)
    wanted = host.rstrip(".").lower()
    return any(_dns_matches(pattern, wanted) for pattern in san.get_values_for_type(x509.DNSName))


def _dns_matches(pattern: str, host: str) -> bool:
    pattern = pattern.rstrip(".").lower()
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first and dot) and rest == pattern[2:] and "*" not in rest
    return pattern == host


def _allows_server_auth(cert: x509.Certificate) -> bool:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return ExtendedKeyUsageOID.SERVER_AUTH in usages or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages


def _san_summary(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subjectAltName"
    names = [str(n) for n in san.get_values_for_type(x509.IPAddress)] + san.get_values_for_type(x509.DNSName)
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else "no IP or DNS name"


def _ip_or_none(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _system_anchors() -> list[x509.Certificate]:
    """The CA certificates :mod:`ssl` trusts by default (its CA file; a CA directory is read lazily by OpenSSL and
    cannot be listed)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    anchors = []
    for der in context.get_ca_certs(binary_form=True):
        with contextlib.suppress(ValueError):
            anchors.append(x509.load_der_x509_certificate(der))
    if not anchors:
        raise EstError("no system CA certificates found for verifying the EST server; configure trusted certificates")
    return anchors


# ---------------------------------------------------------------------- signature checks
def _signature_holds(
    public: PublicKey, signature: bytes, data: bytes, *, pad: str | None, hash_name: str | None, salt: int | None
) -> bool:
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            # the bytes are a digest, possibly truncated to the curve size; ECDSA uses only that many bits anyway
            prehashed = _PREHASHED_BY_LENGTH.get(len(data))
            if prehashed is None:
                return False
            public.verify(signature, data, ec.ECDSA(utils.Prehashed(prehashed)))
            return True
        if pad == "pss":
            algorithm = _PREHASHED_BY_LENGTH.get(len(data))
            if algorithm is None or algorithm.name != hash_name:
                return False
            pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=salt if salt is not None else len(data))
            public.verify(signature, data, pss, utils.Prehashed(algorithm))
            return True
        if pad == "pkcs1":  # ``data`` is the DigestInfo; compare what the signature carries
            return public.recover_data_from_signature(signature, padding.PKCS1v15(), None) == data
    except (InvalidSignature, ValueError):
        return False
    return False


def _describe(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, TLSLocalAlert | TLSRemoteAlert):
        text = text or AlertDescription.toStr(error.description)
    elif isinstance(error, TLSAbruptCloseError):
        text = "connection closed without a TLS alert"
    return text[:300] or type(error).__name__
