"""The daemon's aiohttp carries no default trust: aiohttp's own default client contexts trust nothing (a connection
that forgot its context fails closed) while a context Edgeward builds still trusts the system store. Each case runs
in a fresh interpreter, where aiohttp is not yet imported, against a real TLS server whose CA is the "system" store
(SSL_CERT_FILE)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SRC = Path(__file__).resolve().parents[2] / "src"

CLIENT = textwrap.dedent("""
    import asyncio, json, mimetypes, ssl, sys
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "daemon":  # the way the daemon's entry starts: run/serve, before anything imports aiohttp
        from edgeward.cli import entry
        sys.argv = ["edgeward", "serve", "--help"]
        try:
            entry.main()
        except SystemExit:
            pass
    import aiohttp
    import aiohttp.connector as connector

    async def fetch(ssl_arg):
        try:
            async with aiohttp.ClientSession() as session, session.get(f"https://localhost:{port}/", ssl=ssl_arg) as r:
                return r.status
        except aiohttp.ClientConnectorCertificateError:
            return "certificate refused"

    own = ssl.create_default_context()  # what Edgeward's clients build when no trust is configured
    print(json.dumps({
        "default_ca_count": connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"],
        "with_default": asyncio.run(fetch(True)),
        "with_own_context": asyncio.run(fetch(own)),
        # aiohttp.web's MIME table: Python's built-in types only, or the system's files read as well
        "mime_table_built_in": mimetypes.types_map == mimetypes._types_map_default,
        "mime_files_restored": "/etc/mime.types" in mimetypes.knownfiles,
    }))
""")

SERVER = textwrap.dedent("""
    import http.server, ssl, sys
    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()
""")


def _pki(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA (the machine's "system store" for these runs) and a localhost server certificate it issued."""
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lean aiohttp test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> object:
    tmp = tmp_path_factory.mktemp("lean-aiohttp")
    ca, cert, key = _pki(tmp)
    (tmp / "www").mkdir()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(cert), str(key)], cwd=tmp / "www",
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        yield ca, port
    finally:
        server.kill()
        server.wait()


def _client(mode: str, ca: Path, port: int) -> dict[str, object]:
    env = {**os.environ, "SSL_CERT_FILE": str(ca), "SSL_CERT_DIR": str(ca.parent / "no-such-dir"),
           "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", CLIENT, mode, str(port)], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_plain_aiohttp_trusts_the_system_store(tls_server: tuple[Path, int]) -> None:
    """The control: without the daemon's entry, aiohttp's default context trusts the system store."""
    ca, port = tls_server
    seen = _client("plain", ca, port)
    assert {k: seen[k] for k in ("default_ca_count", "with_default", "with_own_context", "mime_files_restored")} == {
        "default_ca_count": 1, "with_default": 200, "with_own_context": 200, "mime_files_restored": True}


def test_daemon_entry_leaves_aiohttp_defaults_without_trust(tls_server: tuple[Path, int]) -> None:
    ca, port = tls_server
    seen = _client("daemon", ca, port)
    # aiohttp's defaults hold no CA, so a connection relying on them is refused; a context built on purpose (as
    # every outbound client of the daemon does) still trusts the system store.
    assert seen == {"default_ca_count": 0, "with_default": "certificate refused", "with_own_context": 200,
                    "mime_table_built_in": True, "mime_files_restored": True}


def test_patch_is_not_applied_twice_and_is_undone() -> None:
    code = textwrap.dedent("""
        import ssl
        before = ssl.SSLContext.set_default_verify_paths
        from edgeward.cli.lean_aiohttp import import_aiohttp_without_default_trust
        first, second = import_aiohttp_without_default_trust(), import_aiohttp_without_default_trust()
        print(first, second, ssl.SSLContext.set_default_verify_paths is before)
    """)
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(SRC)},
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True", "False", "True"]
