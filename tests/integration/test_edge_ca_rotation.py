"""Rotation soak: an edge CA living seconds, renewed with a new key again and again, while a module keeps asking
for server certificates. No answer may be expired, outlive its CA, or fail to chain to the CA it ships with."""

from __future__ import annotations

import datetime as dt
import json
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgeward.runtime.edge_ca import EDGE_CA_CERT_ID
from edgeward.runtime.engines.process import ProcessEngine
from edgeward.runtime.mgmt_client import ManagementClient
from tests.fixtures.modules import module_results
from tests.fixtures.runtime import RuntimeEnv, serve_runtime

pytestmark = pytest.mark.asyncio(loop_scope="session")

SOAK_SECONDS = 8
FETCHER = textwrap.dedent("""
    import http.client, json, os, socket, time, urllib.parse
    path = urllib.parse.urlparse(os.environ["IOTEDGE_WORKLOADURI"]).path
    name, gen = os.environ["IOTEDGE_MODULEID"], os.environ["IOTEDGE_MODULEGENERATIONID"]
    class C(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(path)
    c = C("localhost")
    end = time.time() + float(os.environ["SOAK_SECONDS"])
    while time.time() < end:
        c.request("POST", f"/modules/{name}/genid/{gen}/certificate/server?api-version=2019-01-30",
                  body=json.dumps({"commonName": name, "expiration": "2099-01-01T00:00:00Z"}),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse(); body = json.loads(r.read())
        body["received"] = time.time()
        print("RESULT " + json.dumps({"status": r.status, "body": body}), flush=True)
    print("DONE", flush=True)
    time.sleep(3600)
""")


@pytest.fixture
async def rt(request: pytest.FixtureRequest, public_dir: Path) -> AsyncIterator[RuntimeEnv]:
    engine = ProcessEngine(public_dir / "state" / "runtime" / "processes", stop_timeout=2.0, allow_elevated=True)
    doc = {"hostname": "soak", "edge_ca": {"expiry_seconds": 3, "auto_renew": {
        "rotate_key": True, "threshold": "50%", "retry": "5%"}}}
    async with serve_runtime(request, public_dir, engine, doc) as env:
        yield env


async def test_server_certs_stay_valid_through_edge_ca_rotations(rt: RuntimeEnv) -> None:
    renewals = rt.certs_env.engine.subscribe()
    mgmt = ManagementClient(rt.mgmt_socket)
    try:
        await mgmt.create_module({"name": "fetcher", "imagePullPolicy": "never", "env": [
            {"key": "SOAK_SECONDS", "value": str(SOAK_SECONDS)}],
            "config": {"image": sys.executable, "createOptions": {"Cmd": ["-c", FETCHER]}}})
        await mgmt.action("fetcher", "start")
        results = await module_results(rt.parts.engine, "fetcher", timeout=SOAK_SECONDS + 30)
    finally:
        await mgmt.close()
    rotations = 0
    while not renewals.empty():
        rotations += renewals.get_nowait().cert_id == EDGE_CA_CERT_ID
    assert rotations >= 3, f"only {rotations} edge CA renewals during the soak"
    ok = [r for r in results if r["status"] == 201]
    retry_later = [r for r in results if r["status"] == 503]
    assert len(ok) + len(retry_later) == len(results), {r["status"] for r in results}
    assert len(ok) >= 20
    cas = set()
    for r in ok:
        chain = x509.load_pem_x509_certificates(r["body"]["certificate"].encode())
        leaf, ca = chain[0], chain[1]
        received = dt.datetime.fromtimestamp(r["body"]["received"], dt.UTC)
        assert leaf.not_valid_before_utc <= received < leaf.not_valid_after_utc, "expired on arrival"
        assert leaf.not_valid_after_utc <= ca.not_valid_after_utc, "outlives its CA"
        leaf.verify_directly_issued_by(ca)
        key = serialization.load_pem_private_key(r["body"]["privateKey"]["bytes"].encode(), None)
        assert key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo) == \
            leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        cas.add(ca.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo))
    assert len(cas) >= 3, "the CA key should have rotated under the module's feet"
    print(json.dumps({"answers": len(results), "ok": len(ok), "503": len(retry_later), "ca_keys": len(cas),
                      "renewals": rotations}))
