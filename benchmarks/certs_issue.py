"""Certificates issued per second through the certs API (local CA, P-256 keys in the software backend), with the
daemon as a separate process and CSRs made up front so the clients measure the service, not themselves."""

from __future__ import annotations

import asyncio
import base64
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeward.supervise import running_daemon

from .load import closed_loop

CONFIG = textwrap.dedent("""
    [cert_issuance.local_ca]
    cert = "bench-ca"
    pk = "bench-ca"

    [cert_issuance.bench-leaf]
    method = "local_ca"
    expiry_days = 7
""")


def csr_pem(i: int) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"device-{i}")]))
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


def run(seconds: float, concurrency: int) -> dict[str, Any]:
    csr = base64.b64encode(csr_pem(0)).decode()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "c.toml").write_text(CONFIG)
        with running_daemon(["run", "-c", str(tmp / "c.toml"), "--state-dir", str(tmp / "s"),
                             "--run-dir", str(tmp / "r")], log_path=tmp / "log"):
            body = {"certId": "bench-leaf", "csr": csr}
            result = asyncio.run(closed_loop(tmp / "r" / "certd.sock", "/certificates?api-version=2020-09-01",
                                             body, concurrency, seconds))
    return {"certs_per_s": result.rate, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "errors": result.errors}
