"""The packaged deployment's shape: `edgeward config apply` splits the super config into per-service files, and each
service runs as `edgeward serve <service> --config-dir`, reading its own file only. The sockets are moved in
[endpoints], so every caller must learn them from its own file; the device is provisioned manually against the IoT
Hub emulator, so the runtime must learn that from edged.toml; a host agent's uid (an identity principal) must be
admitted by keyd from keyd.toml. Then a certificate, the device identity, the host agent's key and a module's
workload calls all work end to end."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
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

from edgeward.certs.client import CertsClient
from edgeward.http import UnixClient
from edgeward.keys.client import KeysClient
from edgeward.keys.model import HmacSha256
from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.supervise import start_daemon, stop_daemon
from edgeward.testing.hub_emulator import HubEmulator
from edgeward.tpm.wire import EDGEWARD_VERSION
from tests.fixtures.modules import client_spec, logs_until
from tests.fixtures.peers import as_uid_async
from tests.fixtures.swtpm import Swtpm

pytestmark = pytest.mark.asyncio(loop_scope="session")

DEVICE = "split-dir-1"
AGENT_UID = 3001


def write_config(base: Path, hub: HubEmulator, key: bytes) -> Path:
    (base / "hub-ca.pem").write_bytes(hub.ca_pem)
    socks = base / "socks"
    config = base / "config.toml"
    config.write_text(textwrap.dedent(f"""
        hostname = "{DEVICE}"
        allow_elevated_docker_permissions = true  # its module runs as root
        [provisioning]
        source = "manual"
        connection_string = "HostName={hub.hostname};DeviceId={DEVICE};SharedAccessKey={base64.b64encode(key).decode()}"

        [edgeward.identity]
        cloud_trust_bundle = "file://{base / 'hub-ca.pem'}"

        [edgeward.runtime]
        engine = "process"

        [[principal]]
        uid = {AGENT_UID}
        name = "host-agent"
        idtype = ["module"]

        [cert_issuance.local_ca]
        cert = "split-ca"
        pk = "split-ca"

        [cert_issuance.server]
        method = "local_ca"

        [endpoints]
        aziot_keyd = "unix://{socks / 'keys.sock'}"
        aziot_certd = "unix://{socks / 'certs.sock'}"
        aziot_identityd = "unix://{socks / 'identity.sock'}"
    """))
    return config


def apply(base: Path, config: Path) -> str:
    env = dict(os.environ, EDGEWARD_STATE_DIR=str(base / "state"), EDGEWARD_RUN_DIR=str(base / "run"),
               COLUMNS="200")
    done = subprocess.run([sys.executable, "-m", "edgeward", "config", "apply", "-c", str(config), "--out-dir",
                           str(base / "etc"), "--no-restart"], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return " ".join(done.stdout.split())


@pytest.mark.skipif(os.getuid() != 0, reason="the hub emulator listens on port 443; clients run as other uids")
async def test_services_from_their_own_files_work_end_to_end(public_dir: Path) -> None:
    loop = asyncio.get_running_loop()
    async with HubEmulator() as hub:
        key = hub.add_device(DEVICE)
        config = write_config(public_dir, hub, key)
        first = await loop.run_in_executor(None, apply, public_dir, config)
        assert "4 new, changed or removed" in first, first
        etc = public_dir / "etc"
        inodes = {p.name: p.stat().st_ino for p in etc.iterdir()}
        again = await loop.run_in_executor(None, apply, public_dir, config)
        assert "0 new, changed or removed" in again, again
        assert {p.name: p.stat().st_ino for p in etc.iterdir()} == inodes  # nothing rewritten

        common = ["--config-dir", str(etc), "--state-dir", str(public_dir / "state"), "--run-dir",
                  str(public_dir / "run")]
        socks = public_dir / "socks"
        procs = []
        try:
            for service in ("keys", "certs", "identity", "edged"):
                procs.append(await loop.run_in_executor(None, start_daemon, ["serve", service, *common]))

            # certd reaches keyd at its moved socket (from certd.toml)
            csr_key = ec.generate_private_key(ec.SECP256R1())
            csr = (x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "split-server")]))
                   .sign(csr_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
            certs = CertsClient(socks / "certs.sock")
            try:
                leaf, ca = x509.load_pem_x509_certificates((await certs.create_cert("server", csr)).encode())
                leaf.verify_directly_issued_by(ca)
            finally:
                await certs.close()

            # identityd provisioned the device and keeps its key in keyd (both sockets from identityd.toml)
            async with UnixClient(socks / "identity.sock", "2021-12-01") as identity:
                _, raw = await identity.request("GET", "/identities/identity")
            spec = json.loads(raw)["spec"]
            assert spec["deviceId"] == DEVICE
            keys = KeysClient(socks / "keys.sock")
            try:
                sig = await keys.sign(spec["auth"]["keyHandle"], HmacSha256(b"token"))
            finally:
                await keys.close()
            assert sig == hmac.new(key, b"token", hashlib.sha256).digest()

            # the host agent (an identity principal) signs in keyd with its handle: keyd.toml admits its uid; it
            # may create no key of its own
            status, body = await as_uid_async(AGENT_UID, socks / "identity.sock", "GET",
                                              "/identities/identity?api-version=2021-12-01")
            assert status == 200 and body["spec"]["moduleId"] == "host-agent", body
            handle = body["spec"]["auth"]["keyHandle"]
            status, signed = await as_uid_async(AGENT_UID, socks / "keys.sock", "POST", "/sign?api-version=2020-09-01",
                                                {"keyHandle": handle, "algorithm": "HMAC-SHA256",
                                                 "parameters": {"message": base64.b64encode(b"hi").decode()}})
            assert status == 200 and "signature" in signed, signed
            status, refused = await as_uid_async(AGENT_UID, socks / "keys.sock", "POST", "/key?api-version=2020-09-01",
                                                 {"keyId": "agent-own", "usage": "sign"})
            assert status == 401, refused

            # edged: module identities from the cloud through identityd (it knows from edged.toml that the device
            # is provisioned), keys and certs over their moved sockets
            mgmt = ManagementClient(public_dir / "run" / "mgmt" / "mgmt.sock")
            try:
                info = await mgmt.system_info()
                assert info["provisioning"]["type"] == "manual", info
                calls = [["POST", "workload", "/modules/{name}/genid/{genid}/sign?api-version=2022-08-03",
                          {"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="}],
                         ["POST", "workload",
                          "/modules/{name}/genid/{genid}/certificate/server?api-version=2022-08-03",
                          {"commonName": "splitmod"}]]
                await mgmt.create_module(client_spec("splitmod", calls, image=sys.executable))
                await mgmt.action("splitmod", "start")
                seen = await logs_until(mgmt, "splitmod", b"DONE", timeout=60)
                assert seen.count(b'"status": 200') == 1 and seen.count(b'"status": 201') == 1, seen
                assert "splitmod" in hub.modules_of(DEVICE)  # registered in the hub by identityd
            finally:
                await mgmt.close()
        finally:
            for proc in reversed(procs):
                await loop.run_in_executor(None, stop_daemon, proc)


async def test_edged_anchors_its_audit_log_in_the_tpm_service_named_in_its_own_file(fresh_swtpm: Swtpm,
                                                                                     tmp_path: Path) -> None:
    """With a TPM, edged.toml says a TPM service runs and where (its socket moved in [endpoints]): the runtime's
    audit log moves the TPM counter over that socket as it starts."""
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent(f"""
        hostname = "split-tpm"
        [edgeward.runtime]
        engine = "process"
        [tpm]
        tcti = "{fresh_swtpm.tcti}"
        [endpoints]
        aziot_tpmd = "unix://{tmp_path / 'socks' / 'tpm.sock'}"
    """))
    loop = asyncio.get_running_loop()
    assert "5 new, changed or removed" in await loop.run_in_executor(None, apply, tmp_path, config)
    common = ["--config-dir", str(tmp_path / "etc"), "--state-dir", str(tmp_path / "state"), "--run-dir",
              str(tmp_path / "run")]
    procs = []
    try:
        for service in ("tpm", "keys", "certs", "edged"):
            procs.append(await loop.run_in_executor(None, start_daemon, ["serve", service, *common]))
        async with UnixClient(tmp_path / "socks" / "tpm.sock", EDGEWARD_VERSION) as tpm:
            _, raw = await tpm.request("GET", "/edgeward/audit-counter")
        assert json.loads(raw)["value"] >= 1, raw  # moved by the runtime's first audit record
    finally:
        for proc in reversed(procs):
            await loop.run_in_executor(None, stop_daemon, proc)
