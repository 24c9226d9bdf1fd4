"""The same services as one process per service (as systemd units run them): certs reaches keys over keyd.sock,
identity reaches both over their sockets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeward.certs.client import CertsClient
from edgeward.http import UnixClient
from edgeward.keys.client import KeysClient
from edgeward.keys.model import HmacSha256
from edgeward.supervise import start_daemon, stop_daemon

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = b"split-device-key-0123456789abcde"


async def test_one_process_per_service(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent(f"""
        hostname = "split"
        [provisioning]
        source = "manual"
        connection_string = "HostName=hub.example;DeviceId=split-1;SharedAccessKey={base64.b64encode(KEY).decode()}"

        [cert_issuance.local_ca]
        cert = "split-ca"
        pk = "split-ca"

        [cert_issuance.server]
        method = "local_ca"
    """))
    common = ["-c", str(config), "--state-dir", str(tmp_path / "state"), "--run-dir", str(tmp_path / "run")]
    procs = []
    try:
        for service in ("keys", "certs", "identity"):  # each waits for the one before it to be ready
            procs.append(await asyncio.get_running_loop().run_in_executor(
                None, start_daemon, ["serve", service, *common]))
        run = tmp_path / "run"
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "split-server")]))
               .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        certs = CertsClient(run / "certd.sock")
        try:
            leaf, ca = x509.load_pem_x509_certificates((await certs.create_cert("server", csr)).encode())
            leaf.verify_directly_issued_by(ca)
        finally:
            await certs.close()
        async with UnixClient(run / "identityd.sock", "2021-12-01") as identity:
            _, raw = await identity.request("GET", "/identities/identity")
        spec = json.loads(raw)["spec"]
        assert spec["deviceId"] == "split-1"
        keys = KeysClient(run / "keyd.sock")
        try:
            sig = await keys.sign(spec["auth"]["keyHandle"], HmacSha256(b"token"))
        finally:
            await keys.close()
        assert sig == hmac.new(KEY, b"token", hashlib.sha256).digest()
    finally:
        for proc in reversed(procs):
            stop_daemon(proc)
