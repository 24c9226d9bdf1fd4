"""``edge_ca.subject``: the full distinguished name IoT Edge 1.5 takes (L, ST, O, OU, C, CN, ...) is what the edge
CA the daemon (``edgeward run``) issues carries, in aziot-certd's order (the table's sorted keys), read back over
the certs socket as aziot's clients read it."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from edgeward.certs.client import CertsClient
from edgeward.certs.policy import EDGE_CA_CERT_ID
from edgeward.http.errors import HttpError
from edgeward.supervise import start_daemon, stop_daemon

pytestmark = pytest.mark.asyncio(loop_scope="session")

CONFIG = """
hostname = "edge-dn"

[edge_ca]
auto_generated_edge_ca_expiry_days = 30

[edge_ca.subject]
CN = "Plant 4 edge CA"
O = "Contoso"
OU = "Edge devices"
L = "McMurdo"
ST = "Antarctica"
C = "AQ"
"""


async def test_edge_ca_carries_the_configured_distinguished_name(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    loop = asyncio.get_running_loop()
    proc: subprocess.Popen[bytes] = await loop.run_in_executor(None, start_daemon, [
        "run", "-c", str(config), "--state-dir", str(tmp_path / "state"), "--run-dir", str(tmp_path / "run")])
    certs = CertsClient(tmp_path / "run" / "certd.sock")
    try:
        deadline = time.monotonic() + 30
        while True:  # the edge CA is issued by the renewal engine as the daemon starts
            try:
                pem = await certs.get_cert(EDGE_CA_CERT_ID)
                break
            except HttpError as e:
                if e.status != 404 or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        ca = x509.load_pem_x509_certificates(pem.encode())[0]
        assert ca.subject == x509.Name([  # C, CN, L, O, OU, ST: aziot-certd's BTreeMap order
            x509.NameAttribute(NameOID.COUNTRY_NAME, "AQ"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Plant 4 edge CA"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "McMurdo"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Contoso"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Edge devices"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Antarctica"),
        ]), ca.subject.rfc4514_string()
        assert ca.issuer == ca.subject  # the quickstart CA is self-signed
    finally:
        await certs.close()
        await loop.run_in_executor(None, stop_daemon, proc)
