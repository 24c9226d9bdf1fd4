"""EST enrollments per second: the project's EST client against the project's EST server (a separate process),
over real TLS on loopback with basic auth, several enrollments in flight."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgeward.certs.est import EstClient
from edgeward.supervise import stop_daemon

from .certs_issue import csr_pem


async def _load(url: str, ca: list[x509.Certificate], seconds: float, concurrency: int) -> tuple[int, float]:
    der = x509.load_pem_x509_csr(csr_pem(1)).public_bytes(serialization.Encoding.DER)
    count = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        client = EstClient(url, ca, "bench", "bench-password")
        try:
            while time.perf_counter() < stop_at:
                await client.simple_enroll(der)
                count += 1
        finally:
            await client.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count, time.perf_counter() - start


def run(seconds: float, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen([sys.executable, "-m", "edgeward.testing.est_server", "--ca-dir", d, "--username",
                                 "bench", "--password", "bench-password"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            m = re.search(r"(https://\S+)", line)
            if m is None:
                raise RuntimeError(f"EST server did not start: {line!r}")
            ca = x509.load_pem_x509_certificates((Path(d) / "ca.pem").read_bytes())
            count, elapsed = asyncio.run(_load(m.group(1), ca, seconds, min(concurrency, 8)))
        finally:
            stop_daemon(proc)  # type: ignore[arg-type]
    return {"enrollments_per_s": count / elapsed, "enrollments": count}
