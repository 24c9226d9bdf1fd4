"""Certificates issued per second through the certs API (local CA, P-256 keys in the software backend), with the
daemon as a separate process and CSRs made up front so the clients measure the service, not themselves; against
the same CSR issued in-process with cryptography by a P-256 CA (check the CSR, build, sign), in the same run.
Goal: API >= 0.5x in-process.

The machine is shared, so the floor is measured before and after the API (their mean is the figure; both are
reported), and CPU time is reported beside the rates: the daemon's CPU per certificate (its event-loop thread and the
whole process, from /proc) against the floor's, which other processes' load changes far less than a rate.

The load generator is the lean one (``load``): aiohttp's client spends more CPU per request than an in-process
issuance, on the same two cores. Its figure is reported beside, measured right after."""

from __future__ import annotations

import asyncio
import base64
import datetime
import os
import tempfile
import textwrap
import time
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


GOAL_VS_IN_PROCESS = 0.5


def in_process_rate(pem: bytes, seconds: float) -> tuple[float, float]:
    """The floor the API is measured against: what issuing costs with no service around it (issues per second, and
    CPU seconds per issue)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench in-process CA")])
    now = datetime.datetime.now(datetime.UTC)

    def issue() -> bytes:
        request = x509.load_pem_x509_csr(pem)
        assert request.is_signature_valid
        cert = (x509.CertificateBuilder().subject_name(request.subject).issuer_name(ca_name)
                .public_key(request.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=7))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(ca_key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM)

    n, start, cpu = 0, time.perf_counter(), time.thread_time()
    while (elapsed := time.perf_counter() - start) < seconds:
        issue()
        n += 1
    return n / elapsed, (time.thread_time() - cpu) / n


def _cpu_seconds(stat: Path) -> float:
    """utime + stime of a /proc stat file (a process's, or one thread's under task/)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(seconds: float, concurrency: int) -> dict[str, Any]:
    pem = csr_pem(0)
    csr = base64.b64encode(pem).decode()
    before, floor_cpu_before = in_process_rate(pem, seconds / 2)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "c.toml").write_text(CONFIG)
        with running_daemon(["run", "-c", str(tmp / "c.toml"), "--state-dir", str(tmp / "s"),
                             "--run-dir", str(tmp / "r")], log_path=tmp / "log") as daemon:
            body: dict[str, object] = {"certId": "bench-leaf", "csr": csr}
            proc = Path(f"/proc/{daemon.pid}")
            loop_thread = proc / "task" / str(daemon.pid) / "stat"  # the main thread runs the event loop
            socket, path = tmp / "r" / "certd.sock", "/certificates?api-version=2020-09-01"
            asyncio.run(closed_loop(socket, path, body, concurrency, 0.5, warmup=0))  # the CA made, code warm
            cpu = _cpu_seconds(proc / "stat"), _cpu_seconds(loop_thread)
            result = asyncio.run(closed_loop(socket, path, body, concurrency, seconds, warmup=0, client="lean"))
            process_cpu, loop_cpu = _cpu_seconds(proc / "stat") - cpu[0], _cpu_seconds(loop_thread) - cpu[1]
            with_aiohttp = asyncio.run(closed_loop(socket, path, body, concurrency, seconds, warmup=0))
    after, floor_cpu_after = in_process_rate(pem, seconds / 2)
    floor, floor_cpu = (before + after) / 2, (floor_cpu_before + floor_cpu_after) / 2
    answered = result.requests or 1
    return {"certs_per_s": result.rate, "in_process_per_s": floor, "in_process_before_after": (before, after),
            "api_vs_in_process": result.rate / floor, "met": result.rate / floor >= GOAL_VS_IN_PROCESS,
            "aiohttp_client_per_s": with_aiohttp.rate, "aiohttp_client_vs_in_process": with_aiohttp.rate / floor,
            "p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "errors": result.errors + with_aiohttp.errors,
            "daemon_cpu_us_per_cert": process_cpu / answered * 1e6, "loop_cpu_us_per_cert": loop_cpu / answered * 1e6,
            "in_process_cpu_us_per_cert": floor_cpu * 1e6}
