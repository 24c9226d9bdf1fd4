"""A small RFC 7030 EST server (aiohttp + cryptography) for tests and demos. Not for production use.

No EST server is packaged for Debian or PyPI, and the client must be proven over real TLS, so this one exists. It
issues from an in-memory CA and can misbehave on purpose: answer late (``delay``), fail (``fail_next``), or ask the
client to come back later (``pending_next``: 202 + Retry-After). Routes, under ``/.well-known/est`` and under
``/.well-known/est/<label>``: ``GET cacerts``, ``POST simpleenroll``, ``POST simplereenroll``, ``GET csrattrs``.

Authentication, when ``username`` is set: HTTP basic auth or a verified TLS client certificate, for every route but
``cacerts`` (RFC 7030 section 4.1.1 lets anyone fetch the CA). ``simplereenroll`` always requires a client
certificate issued by this CA, whose subject and SAN the new CSR must repeat (RFC 7030 section 4.2.2).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import hmac
import signal
import ssl
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from types import TracebackType
from typing import Literal

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from ..certs.est.pkcs7 import base64_body, certs_only_pkcs7

__all__ = ["EstServer", "ResponseFormat", "generate_ca", "generate_intermediate", "issue_certificate", "main"]

ResponseFormat = Literal["pkcs7-base64", "pkcs7-der", "pem", "der-base64"]
"""How certificates are answered: RFC 7030's base64 PKCS#7, or the deviations seen in the field."""

_PKCS7_TYPE = "application/pkcs7-mime; smime-type=certs-only"
_CONTROLLED = frozenset({ExtensionOID.SUBJECT_KEY_IDENTIFIER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER})
_CSR_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm)


def generate_ca(
    common_name: str = "Edgeward Test EST CA", lifetime: timedelta = timedelta(days=365)
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed P-256 root CA, valid from now for ``lifetime``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_certificate(
    csr: x509.CertificateSigningRequest,
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    lifetime: timedelta,
) -> x509.Certificate:
    """An X.509 v3 certificate for ``csr``: its subject and requested extensions, fresh SKID/AKID, never outliving
    the CA. A requested BasicConstraints is honoured (an edge CA may be enrolled); otherwise the leaf gets ca=False.
    Validity starts now, not backdated, so that short lifetimes give renewal tests exact timings."""
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(min(now + lifetime, ca_cert.not_valid_after_utc))
    )
    requested = {ext.oid for ext in csr.extensions}
    for ext in csr.extensions:
        if ext.oid not in _CONTROLLED:
            builder = builder.add_extension(ext.value, ext.critical)
    if ExtensionOID.BASIC_CONSTRAINTS not in requested:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
    builder = builder.add_extension(_authority_key_id(ca_cert, ca_key), critical=False)
    return builder.sign(ca_key, _digest_for(ca_key))


def generate_intermediate(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, common_name: str = "Intermediate",
    lifetime: timedelta = timedelta(days=10),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """An intermediate CA under ``ca_cert`` (path length 0), for tests of chain handling."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return issue_certificate(csr, ca_cert, ca_key, lifetime), key


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    text: str


class EstServer:
    """The EST server on loopback with TLS, started and stopped as an async context manager.

    ``client_auth`` is the TLS client-certificate policy (``ssl.CERT_NONE``, ``CERT_OPTIONAL``, ``CERT_REQUIRED``);
    client certificates must chain to the CA or to one of ``client_trust`` (bootstrap identities from elsewhere).
    ``cert_lifetime`` is a ``timedelta`` or seconds. ``csrattrs`` is the DER CsrAttrs to serve (``None``: 204).
    """

    def __init__(
        self,
        *,
        ca_cert: x509.Certificate | None = None,
        ca_key: CertificateIssuerPrivateKeyTypes | None = None,
        username: str | None = None,
        password: str | None = None,
        client_auth: ssl.VerifyMode = ssl.CERT_NONE,
        client_trust: Sequence[x509.Certificate] = (),
        cert_lifetime: timedelta | float = timedelta(days=30),
        delay: float = 0.0,
        csrattrs: bytes | None = None,
        response_format: ResponseFormat = "pkcs7-base64",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if (ca_cert is None) != (ca_key is None):
            raise ValueError("give both ca_cert and ca_key, or neither for a generated test CA")
        if ca_cert is None or ca_key is None:
            ca_cert, ca_key = generate_ca()
        self.ca_cert = ca_cert
        self.ca_key = ca_key
        self.username = username
        self.password = password
        self.client_auth = client_auth
        self.client_trust = list(client_trust)
        self.cert_lifetime = cert_lifetime if isinstance(cert_lifetime, timedelta) else timedelta(seconds=cert_lifetime)
        self.delay = delay
        self.csrattrs = csrattrs
        self.response_format: ResponseFormat = response_format
        self.host = host
        self.server_cert, self._server_key = self._server_identity()
        self.enrollments = 0  # certificates issued by simpleenroll
        self.reenrollments = 0  # certificates issued by simplereenroll
        self.hits: collections.Counter[str] = collections.Counter()  # requests per operation, answered or not
        self.issued: list[x509.Certificate] = []
        self._failures: collections.deque[_Failure] = collections.deque()
        self._deferrals: collections.deque[str] = collections.deque()  # Retry-After values
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # ------------------------------------------------------------------ what tests read and steer
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the EST server is not started")
        return self._port

    @property
    def base_url(self) -> str:
        return self.url()

    def url(self, label: str | None = None) -> str:
        """The EST base URL as aziot configures it, optionally with a CA label segment."""
        base = f"https://{self.host}:{self.port}/.well-known/est"
        return f"{base}/{label}" if label else base

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    def fail_next(self, n: int = 1, status: int = 500, message: str = "injected failure") -> None:
        """Answer the next ``n`` requests (any operation, after ``delay``) with ``status`` and ``message``."""
        self._failures.extend(_Failure(status, message) for _ in range(n))

    def pending_next(self, n: int = 1, retry_after: int | str = 1) -> None:
        """Answer the next ``n`` enrollment requests with 202 Accepted and ``Retry-After: retry_after`` (seconds or an
        HTTP date). Only authenticated ``simpleenroll``/``simplereenroll`` requests are deferred, as a CA deciding
        later would; scripted failures (``fail_next``) play first."""
        self._deferrals.extend(str(retry_after) for _ in range(n))

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> EstServer:
        app = web.Application(client_max_size=64 * 1024)
        for prefix in ("/.well-known/est", "/.well-known/est/{label}"):
            app.router.add_get(f"{prefix}/cacerts", self._cacerts)
            app.router.add_post(f"{prefix}/simpleenroll", self._simpleenroll)
            app.router.add_post(f"{prefix}/simplereenroll", self._simplereenroll)
            app.router.add_get(f"{prefix}/csrattrs", self._csrattrs)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port, ssl_context=self._tls_context())
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> EstServer:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ routes
    async def _cacerts(self, request: web.Request) -> web.StreamResponse:
        if (early := await self._prelude("cacerts", request, authenticate=False)) is not None:
            return early
        return self._certs_response([self.ca_cert])

    async def _simpleenroll(self, request: web.Request) -> web.StreamResponse:
        if (early := await self._prelude("simpleenroll", request, authenticate=True, deferrable=True)) is not None:
            return early
        cert = self._issue(await _read_csr(request))
        self.enrollments += 1
        return self._certs_response([cert])

    async def _simplereenroll(self, request: web.Request) -> web.StreamResponse:
        if (early := await self._prelude("simplereenroll", request, authenticate=True, deferrable=True)) is not None:
            return early
        current = _peer_certificate(request)
        if current is None or not _issued_by(current, self.ca_cert):
            raise _text(
                web.HTTPForbidden, "re-enrollment requires the client certificate being renewed, issued by this CA"
            )
        csr = await _read_csr(request)
        if csr.subject != current.subject or _san(csr.extensions) != _san(current.extensions):
            raise _text(
                web.HTTPBadRequest, "re-enrollment CSR must keep the subject and SAN of the current certificate"
            )
        cert = self._issue(csr)
        self.reenrollments += 1
        return self._certs_response([cert])

    async def _csrattrs(self, request: web.Request) -> web.StreamResponse:
        if (early := await self._prelude("csrattrs", request, authenticate=True)) is not None:
            return early
        if self.csrattrs is None:
            return web.Response(status=204)
        return web.Response(
            body=base64_body(self.csrattrs),
            headers={"Content-Type": "application/csrattrs", "Content-Transfer-Encoding": "base64"},
        )

    # ------------------------------------------------------------------ plumbing
    async def _prelude(
        self, op: str, request: web.Request, *, authenticate: bool, deferrable: bool = False
    ) -> web.Response | None:
        """Count, delay, play a scripted failure, authenticate, play a scripted deferral: an early answer, or None."""
        self.hits[op] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self._failures:
            failure = self._failures.popleft()
            return web.Response(status=failure.status, text=failure.text)
        if authenticate and not self._authenticated(request):
            return web.Response(
                status=401,
                text="authentication required: HTTP basic credentials or a client certificate",
                headers={"WWW-Authenticate": 'Basic realm="estrealm", charset="UTF-8"'},
            )
        if deferrable and self._deferrals:
            retry_after = self._deferrals.popleft()
            return web.Response(status=202, text="request accepted; retry later", headers={"Retry-After": retry_after})
        return None

    def _authenticated(self, request: web.Request) -> bool:
        if self.username is None or _peer_certificate(request) is not None:
            return True
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            login, colon, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        user_ok = hmac.compare_digest(login, self.username.encode())
        password_ok = hmac.compare_digest(password, (self.password or "").encode())
        return bool(colon) and user_ok and password_ok

    def _issue(self, csr: x509.CertificateSigningRequest) -> x509.Certificate:
        try:
            cert = issue_certificate(csr, self.ca_cert, self.ca_key, self.cert_lifetime)
        except _CSR_ERRORS as e:
            raise _text(web.HTTPBadRequest, f"cannot issue a certificate for this CSR: {e}") from e
        self.issued.append(cert)
        return cert

    def _certs_response(self, certs: list[x509.Certificate]) -> web.Response:
        fmt = self.response_format
        if fmt == "pem":
            pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
            return web.Response(body=pem, headers={"Content-Type": "application/pem-certificate-chain"})
        if fmt == "der-base64":
            der = certs[0].public_bytes(serialization.Encoding.DER)
            return web.Response(
                body=base64_body(der),
                headers={"Content-Type": "application/pkix-cert", "Content-Transfer-Encoding": "base64"},
            )
        p7 = certs_only_pkcs7(certs)
        if fmt == "pkcs7-der":
            return web.Response(body=p7, headers={"Content-Type": _PKCS7_TYPE})
        return web.Response(
            body=base64_body(p7), headers={"Content-Type": _PKCS7_TYPE, "Content-Transfer-Encoding": "base64"}
        )

    def _server_identity(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A TLS server certificate from the CA for 127.0.0.1 and localhost (and ``host`` if it is a name)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.IPAddress(IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
        if self.host not in {"127.0.0.1", "localhost"}:
            names.append(x509.DNSName(self.host))
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Edgeward test EST server")]))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .sign(key, hashes.SHA256())
        )
        return issue_certificate(csr, self.ca_cert, self.ca_key, timedelta(days=2)), key

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.server_cert, self.ca_cert))
        key = self._server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        with tempfile.TemporaryDirectory(prefix="edgeward-est-server-") as tmp:  # ssl reads paths only
            (Path(tmp) / "chain.pem").write_bytes(chain)
            (Path(tmp) / "key.pem").write_bytes(key)
            context.load_cert_chain(Path(tmp) / "chain.pem", Path(tmp) / "key.pem")
        context.verify_mode = self.client_auth
        if self.client_auth != ssl.CERT_NONE:
            anchors = [self.ca_cert, *self.client_trust]
            context.load_verify_locations(
                cadata=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in anchors).decode("ascii")
            )
        return context


async def _read_csr(request: web.Request) -> x509.CertificateSigningRequest:
    """The CSR in the body: base64 DER as RFC 7030 specifies (line breaks allowed), or raw DER."""
    if request.content_type != "application/pkcs10":
        raise _text(
            web.HTTPUnsupportedMediaType, f"expected Content-Type application/pkcs10, got {request.content_type}"
        )
    body = await request.read()
    der = body
    if not body.startswith(b"\x30"):
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError) as e:
            raise _text(web.HTTPBadRequest, "request body is not a base64 PKCS#10 CSR") from e
    try:
        csr = x509.load_der_x509_csr(der)
        valid = csr.is_signature_valid
    except _CSR_ERRORS as e:
        raise _text(web.HTTPBadRequest, f"request body is not a PKCS#10 CSR: {e}") from e
    if not valid:
        raise _text(web.HTTPBadRequest, "the CSR's signature does not verify with its public key")
    return csr


def _peer_certificate(request: web.Request) -> x509.Certificate | None:
    """The client's TLS certificate, already verified by the handshake against the configured anchors."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return x509.load_der_x509_certificate(der) if der else None


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _san(extensions: x509.Extensions) -> x509.SubjectAlternativeName | None:
    try:
        return extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def _text(kind: type[web.HTTPException], message: str, headers: dict[str, str] | None = None) -> web.HTTPException:
    return kind(text=message, headers=headers)


def _authority_key_id(
    ca_cert: x509.Certificate, ca_key: CertificateIssuerPrivateKeyTypes
) -> x509.AuthorityKeyIdentifier:
    try:
        skid = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(skid)


def _digest_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)  # X.509 times have whole seconds


# ---------------------------------------------------------------------- standalone, for the demo
async def _serve(args: argparse.Namespace) -> None:
    server = EstServer(
        username=args.username,
        password=args.password,
        client_auth={"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}[
            args.client_cert
        ],
        cert_lifetime=args.cert_lifetime,
        host=args.host,
        port=args.port,
    )
    ca_dir = Path(args.ca_dir)
    ca_dir.mkdir(parents=True, exist_ok=True)
    (ca_dir / "ca.pem").write_bytes(server.ca_pem)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        print(f"EST server at {server.base_url} (CA certificate in {ca_dir / 'ca.pem'})", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeward.testing.est_server", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on --host (0: any free port; it is printed)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ca-dir", required=True, help="directory to write the CA certificate (ca.pem) into")
    parser.add_argument("--username", help="require HTTP basic auth with this user (or a client certificate)")
    parser.add_argument("--password", help="the basic-auth password")
    parser.add_argument("--client-cert", choices=["none", "optional", "required"], default="optional")
    parser.add_argument("--cert-lifetime", type=float, default=30 * 86400.0, help="seconds (default 30 days)")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
