"""The runtime over the host-process engine: management API lifecycle, the workload API as modules call it,
attestation refusals, the watchdog and the integrity monitor — real processes, real sockets."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import io
import json
import os
import shutil
import signal
import sqlite3
import sys
import textwrap
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeward.http.client import UnixClient
from edgeward.http.errors import HttpError
from edgeward.keys.model import AeadSalted
from edgeward.runtime.engines.process import ProcessEngine
from edgeward.runtime.identities import module_key_handle
from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.runtime.workload_routes import module_encryption_handle
from tests.fixtures.modules import client_spec, module_results
from tests.fixtures.runtime import RuntimeEnv, serve_runtime

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _engine(base: Path) -> ProcessEngine:
    """Modules (and the edge agent) run as the test's user, root: elevated permissions on (off:
    test_host_module_privileges.py)."""
    return ProcessEngine(base / "state" / "runtime" / "processes", stop_timeout=2.0, backoff_base=0.05,
                         backoff_cap=0.5, allow_elevated=True)


@pytest.fixture
async def rt(request: pytest.FixtureRequest, public_dir: Path) -> AsyncIterator[RuntimeEnv]:
    async with serve_runtime(request, public_dir, _engine(public_dir), {"hostname": "edge1"}) as env:
        yield env


async def _wait_state(mgmt: ManagementClient, name: str, state: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        details = await mgmt.get_module(name)
        if details["status"]["runtimeStatus"]["status"] == state:
            return details
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{name} is {details['status']} not {state}")
        await asyncio.sleep(0.05)


async def test_module_lifecycle_through_the_management_api(rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    spec = client_spec("sensor", [])
    created = await mgmt.create_module(spec)
    assert created["name"] == "sensor" and created["config"]["settings"]["image"] == sys.executable
    assert created["config"]["settings"]["imageHash"].startswith("sha256:")
    assert created["status"]["runtimeStatus"]["status"] == "stopped"
    reg = rt.parts.registry.get("sensor")
    assert reg is not None and reg.engine_id == created["id"] and reg.generation_id
    with pytest.raises(HttpError) as dup:
        await mgmt.create_module(spec)
    assert dup.value.status == 409

    await mgmt.action("sensor", "start")
    running = await _wait_state(mgmt, "sensor", "running")
    assert "startTime" in running["status"]
    assert [m["name"] for m in await mgmt.list_modules()] == ["sensor"]
    await module_results(rt.parts.engine, "sensor")
    lines = [c async for c in mgmt.logs("sensor", tail=10)]
    assert any(b"DONE" in c.data for c in lines)

    await mgmt.action("sensor", "restart")
    await _wait_state(mgmt, "sensor", "running")
    await mgmt.action("sensor", "stop")
    await _wait_state(mgmt, "sensor", "stopped")

    updated = await mgmt.update_module("sensor", client_spec("sensor", [["GET", "workload", "/trust-bundle", None]]),
                                       start=True)
    assert updated["status"]["runtimeStatus"]["status"] == "running"
    assert rt.parts.registry.get("sensor").generation_id == reg.generation_id  # type: ignore[union-attr]

    await mgmt.delete_module("sensor")
    assert await mgmt.list_modules() == []
    assert not (rt.settings.workload_root / "sensor").exists()
    for call in (mgmt.get_module("sensor"), mgmt.action("sensor", "start"), mgmt.delete_module("sensor")):
        with pytest.raises(HttpError) as missing:
            await call
        assert missing.value.status == 404
    # nothing is kept for a module name no one is using (the per-module lock used to stay for every name ever used)
    assert len(rt.parts.runtime._locks) == 0


async def test_bad_module_specs_are_refused_with_every_problem(mgmt: ManagementClient) -> None:
    with pytest.raises(HttpError) as bad:
        await mgmt.create_module({"name": "../x", "config": {"image": 3}, "imagePullPolicy": "maybe"})
    assert bad.value.status == 422
    for where in ("body.name", "body.config.image", "body.imagePullPolicy"):
        assert where in bad.value.message
    with pytest.raises(HttpError) as missing_binary:
        await mgmt.create_module(client_spec("ghost", [], image="/nonexistent/bin"))
    assert missing_binary.value.status == 400
    http = UnixClient(mgmt.http.socket_path, "2022-08-03")
    try:
        for path in ("/modules/a%2F..%2Fb", "/modules/" + "x" * 300):
            with pytest.raises(HttpError) as trick:
                await http.request("GET", path)
            assert trick.value.status in (400, 404)
        with pytest.raises(HttpError) as no_version:
            await http.request("GET", "/modules", api_version="1999-01-01")
        assert no_version.value.status == 400
    finally:
        await http.close()


async def test_system_info_resources_identities_and_support_bundle(rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    info = await mgmt.system_info()
    assert info["osType"] == "linux" and info["product_info"].startswith("edgeward/") and info["version"]
    _, raw = await mgmt.http.request("GET", "/systeminfo/resources")
    resources = json.loads(raw)
    assert resources["total_ram"] > 0 and resources["disks"]
    created = json.loads((await mgmt.http.request("POST", "/identities", {"moduleId": "hostagent"}))[1])
    assert created["moduleId"] == "hostagent" and created["generationId"]
    assert [i["moduleId"] for i in await mgmt.identities()] == ["hostagent"]
    await mgmt.http.request("DELETE", "/identities/hostagent")
    assert await mgmt.identities() == []
    await mgmt.create_module(client_spec("chatty", []))
    await mgmt.action("chatty", "start")
    await module_results(rt.parts.engine, "chatty")
    _, bundle = await mgmt.http.request("GET", "/systeminfo/supportbundle")
    names = zipfile.ZipFile(io.BytesIO(bundle)).namelist()
    assert {"systeminfo.json", "modules.json", "logs/chatty.log"} <= set(names)
    assert b"DONE" in zipfile.ZipFile(io.BytesIO(bundle)).read("logs/chatty.log")


async def test_a_module_uses_the_workload_api_for_itself(rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    data = base64.b64encode(b"edge1/devices/edge1/modules/worker\n1900000000").decode()
    iv = base64.b64encode(b"0123456789ab").decode()
    calls = [
        ["POST", "workload", "/modules/{name}/genid/{genid}/sign?api-version=2019-01-30",
         {"keyId": "primary", "algo": "HMACSHA256", "data": data}],
        ["POST", "workload", "/modules/{name}/genid/{genid}/encrypt?api-version=2019-01-30",
         {"plaintext": base64.b64encode(b"secret").decode(), "initializationVector": iv}],
        ["POST", "workload", "/modules/{name}/genid/{genid}/certificate/server?api-version=2019-01-30",
         {"commonName": "worker", "expiration": "2099-01-01T00:00:00Z"}],
        ["POST", "workload", "/modules/{name}/certificate/identity?api-version=2019-01-30",
         {"expiration": (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()}],
        ["GET", "workload", "/trust-bundle?api-version=2019-01-30", None],
        ["POST", "workload", "/modules/{name}/genid/{genid}/sign?api-version=2019-01-30",
         {"keyId": "tertiary", "algo": "HMACSHA256", "data": data}],
        ["POST", "workload", "/modules/{name}/genid/{genid}/sign?api-version=2019-01-30",
         {"keyId": "primary", "algo": "SHA1", "data": data}],
    ]
    await mgmt.create_module(client_spec("worker", calls))
    await mgmt.action("worker", "start")
    sign, enc, server, ident, bundle, bad_key, bad_algo = await module_results(rt.parts.engine, "worker")
    reg = rt.parts.registry.get("worker")
    assert reg is not None
    assert sign["status"] == 200, sign
    keys = rt.certs_env.keys
    handle = await module_key_handle(keys, "worker", reg.generation_id)
    key = await keys.export_derived_key(handle)
    expected = hmac.new(key, base64.b64decode(data), hashlib.sha256).digest()
    assert base64.b64decode(sign["body"]["digest"]) == expected

    assert enc["status"] == 200
    enc_handle = await module_encryption_handle(keys, "worker", reg.generation_id)
    opened = await keys.decrypt(enc_handle, AeadSalted(b"0123456789ab", b""),
                                base64.b64decode(enc["body"]["ciphertext"]))
    assert opened == b"secret"

    assert server["status"] == 201, server
    chain = x509.load_pem_x509_certificates(server["body"]["certificate"].encode())
    leaf, ca = chain[0], chain[-1]
    roots = x509.load_pem_x509_certificates(bundle["body"]["certificate"].encode())
    assert ca.subject == roots[-1].subject
    leaf.verify_directly_issued_by(chain[1])
    assert leaf.not_valid_after_utc <= ca.not_valid_after_utc  # never outlives the edge CA
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    assert sans == ["worker"]  # the device host name is the edge hub's only
    key_pem = serialization.load_pem_private_key(server["body"]["privateKey"]["bytes"].encode(), None)
    assert key_pem.public_key().public_numbers() == leaf.public_key().public_numbers()  # type: ignore[union-attr]

    assert ident["status"] == 201
    id_leaf = x509.load_pem_x509_certificates(ident["body"]["certificate"].encode())[0]
    assert id_leaf.subject.rfc4514_string() == "CN=worker"
    assert id_leaf.not_valid_after_utc <= dt.datetime.now(dt.UTC) + dt.timedelta(hours=1, minutes=1)
    # IoT Edge 1.5 reads only `data` and signs with the module's primary key (contract review F3)
    assert bad_key["status"] == 200 and base64.b64decode(bad_key["body"]["digest"]) == expected, bad_key
    assert bad_algo["status"] == 200 and base64.b64decode(bad_algo["body"]["digest"]) == expected, bad_algo


async def test_the_workload_api_reads_bodies_as_iot_edge_does(rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    """Found by the session-14 contract review: IoT Edge 1.5's workload `sign` reads only `data` and signs with the
    module's primary key (F3; keyId and algo were required here, 422); `certificate/identity` takes any body or none
    (F4; none was a 422); certificate replies' `expiration` is chrono's to_rfc3339, "+00:00" (F7; "Z" here); an
    `initializationVector` of 1 to 7 bytes, which OpenSSL takes, was a 400 (F5): the module's own (salted) format
    takes it now; IoT Edge's sealed formats, whose IV is the GCM nonce, still need 8 (the cryptography package's
    minimum)."""
    from edgeward.keys.model import Aead
    from edgeward.runtime.workload_routes import LEGACY_ENCRYPTION_KEY_ID

    ident = await rt.parts.identities.ensure("reader")
    keys = rt.certs_env.keys
    legacy_key = await keys.create_key_if_not_exists(LEGACY_ENCRYPTION_KEY_ID, "encrypt")
    legacy = await keys.encrypt(legacy_key, Aead(b"\x07" * 8, f"reader{ident.generation_id}".encode()), b"old secret")
    data = base64.b64encode(b"edge1/devices/edge1/modules/reader\n1900000000").decode()
    sign = "/modules/{name}/genid/{genid}/sign?api-version=2019-01-30"
    calls = [
        ["POST", "workload", sign, {"data": data}],
        ["POST", "workload", sign, {"keyId": "secondary", "algo": "HMACSHA512", "data": data}],
        ["POST", "workload", sign, {"keyId": 7, "algo": None, "data": data}],
        ["POST", "workload", "/modules/{name}/genid/{genid}/encrypt?api-version=2019-01-30",
         {"plaintext": base64.b64encode(b"secret").decode(), "initializationVector": "Bw=="}],
        ["POST", "workload", "/modules/{name}/genid/{genid}/decrypt?api-version=2019-01-30",
         {"ciphertext": base64.b64encode(legacy).decode(), "initializationVector": "BwcHBwcHBwc="}],
        ["POST", "workload", "/modules/{name}/genid/{genid}/encrypt?api-version=2019-01-30",
         {"plaintext": base64.b64encode(b"secret").decode(), "initializationVector": ""}],
        ["POST", "workload", "/modules/{name}/certificate/identity?api-version=2020-07-07", None],
        ["POST", "workload", "/modules/{name}/genid/{genid}/certificate/server?api-version=2019-01-30",
         {"commonName": "reader"}],
        ["POST", "workload", "/modules/{name}/genid/{genid}/sign?api-version=2019-01-30", None],
    ]
    await mgmt.create_module(client_spec("reader", calls))
    await mgmt.action("reader", "start")
    results = await module_results(rt.parts.engine, "reader")
    bare, other_key, odd_types, enc, opened, empty_iv, identity, server, no_body = results
    reg = rt.parts.registry.get("reader")
    assert reg is not None and reg.generation_id == ident.generation_id
    key = await keys.export_derived_key(await module_key_handle(keys, "reader", reg.generation_id))
    expected = hmac.new(key, base64.b64decode(data), hashlib.sha256).digest()
    for answer in (bare, other_key, odd_types):
        assert answer["status"] == 200 and base64.b64decode(answer["body"]["digest"]) == expected, answer
    assert enc["status"] == 200, enc
    enc_handle = await module_encryption_handle(keys, "reader", reg.generation_id)
    assert await keys.decrypt(enc_handle, AeadSalted(b"\x07", b""), base64.b64decode(enc["body"]["ciphertext"])) \
        == b"secret"
    assert opened["status"] == 200 and base64.b64decode(opened["body"]["plaintext"]) == b"old secret", opened
    assert empty_iv["status"] == 400 and "iv must be 1 to 128 bytes" in empty_iv["body"]["message"], empty_iv
    assert no_body["status"] in (400, 422), no_body  # sign still needs its data
    for answer in (identity, server):
        assert answer["status"] == 201, answer
        leaf = x509.load_pem_x509_certificates(answer["body"]["certificate"].encode())[0]
        expiration = answer["body"]["expiration"]
        assert expiration == leaf.not_valid_after_utc.isoformat(), expiration  # 2027-03-04T19:56:02+00:00
        assert expiration.endswith("+00:00") and len(expiration) == 25, expiration


async def test_modules_cannot_act_as_each_other(rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    await mgmt.create_module(client_spec("victim", []))
    victim = rt.parts.registry.get("victim")
    assert victim is not None
    sign = {"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="}
    calls = [
        ["POST", "workload", f"/modules/victim/genid/{victim.generation_id}/sign?api-version=2019-01-30", sign],
        ["POST", "workload", "/modules/{name}/genid/not-my-generation/sign?api-version=2019-01-30", sign],
        ["POST", "workload", "/modules/{name}/genid/{genid}/sign?api-version=2019-01-30", sign],
        ["POST", "workload", "/modules/..%2Fvictim/genid/{genid}/sign?api-version=2019-01-30", sign],
        ["POST", "workload", "/modules/victim/certificate/identity?api-version=2019-01-30", {}],
    ]
    await mgmt.create_module(client_spec("attacker", calls))
    await mgmt.action("attacker", "start")
    as_victim, wrong_gen, own, traversal, victim_cert = await module_results(rt.parts.engine, "attacker")
    assert as_victim["status"] == 403 and "registration_for" in as_victim["body"]["message"]
    assert wrong_gen["status"] == 403 and "generation" in wrong_gen["body"]["message"]
    assert own["status"] == 200
    assert traversal["status"] in (400, 404)
    assert victim_cert["status"] == 403


async def test_host_processes_and_other_modules_are_refused(rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    # This test process is a host process (root), not a module: the workload API refuses it at container_of.
    await mgmt.create_module(client_spec("target", []))
    reg = rt.parts.registry.get("target")
    assert reg is not None
    socket = rt.settings.workload_root / "target" / "workload.sock"
    client = UnixClient(socket, "2019-01-30")
    try:
        with pytest.raises(HttpError) as host:
            await client.request("POST", f"/modules/target/genid/{reg.generation_id}/sign",
                                 {"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="})
        assert host.value.status == 403 and "container_of" in host.value.message
    finally:
        await client.close()
    # A module that is not the edge agent may not use the management API, even with the socket in hand.
    mgmt_dir = str(rt.settings.mgmt_dir)
    calls = [["GET", "mgmt", "/modules?api-version=2022-08-03", None]]
    spec = client_spec("sneaky", calls)
    spec["config"]["env"].append({"key": "IOTEDGE_MANAGEMENTURI", "value": f"unix://{mgmt_dir}/mgmt.sock"})
    await mgmt.create_module(spec)
    await mgmt.action("sneaky", "start")
    (listing,) = await module_results(rt.parts.engine, "sneaky")
    message = listing["body"]["message"]
    assert listing["status"] == 403 and "registration_for" in message and "module sneaky" in message, message


async def test_changed_binary_is_found_audited_and_refused(rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    binary = rt.base / "bin" / "python-copy"
    binary.parent.mkdir(exist_ok=True)
    shutil.copy2(Path(sys.executable).resolve(), binary)
    sign = {"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="}
    go = rt.base / "go"
    calls = [["POST", "workload", "/modules/{name}/genid/{genid}/sign?api-version=2019-01-30", sign]]
    await mgmt.create_module(client_spec("tampered", calls, image=str(binary), go_file=str(go)))
    await mgmt.action("tampered", "start")
    await module_results(rt.parts.engine, "tampered", until=b"WAITING")
    assert await rt.parts.monitor.check() == []
    implant = binary.with_name("implant")  # a running binary cannot be written: it is replaced, as updaters do
    shutil.copy2(binary, implant)
    with implant.open("ab") as f:
        f.write(b"\0implant")
    implant.replace(binary)
    findings = await rt.parts.monitor.check()
    assert [(f.kind, f.module) for f in findings] == [("binary_changed", "tampered")]
    records = rt.parts.audit.records()
    assert records[-1].kind == "integrity.binary_changed" and records[-1].module == "tampered"
    assert rt.parts.audit.verify().ok
    # Calls from a module the monitor flagged are refused (policy "refuse"), naming the measure step.
    go.touch()
    (refused,) = await module_results(rt.parts.engine, "tampered")
    assert refused["status"] == 403 and "measure" in refused["body"]["message"]


async def test_edge_agent_is_bootstrapped_may_manage_and_is_kept_alive(request: pytest.FixtureRequest,
                                                                       public_dir: Path) -> None:
    calls = [["GET", "mgmt", "/modules?api-version=2022-08-03", None],
             ["POST", "mgmt", "/modules?api-version=2022-08-03", client_spec("deployed", [])],
             ["POST", "mgmt", "/modules/deployed/start?api-version=2022-08-03", None],
             ["DELETE", "mgmt", "/modules/edgeAgent?api-version=2022-08-03", None]]
    agent_spec = client_spec("edgeAgent", calls)
    doc = {"hostname": "edge1", "agent": {"name": "edgeAgent", "type": "docker",
                                          "config": agent_spec["config"]["settings"],
                                          "env": {"EDGEWARD_TEST_CALLS": json.dumps(calls)}},
           "edgeward": {"runtime": {"watchdog_seconds": 1}}}
    async with serve_runtime(request, public_dir, _engine(public_dir), doc) as rt:
        engine = rt.parts.engine
        listing, created, started, delete_self = await module_results(engine, "edgeAgent")
        assert listing["status"] == 200 and [m["name"] for m in listing["body"]["modules"]] == ["edgeAgent"]
        assert created["status"] == 201 and started["status"] == 204
        assert delete_self["status"] == 403  # the runtime keeps the agent; nobody removes it through the API
        agent = await engine.inspect("edgeAgent")
        assert agent.state == "running" and agent.pid is not None
        reg = rt.parts.registry.get("edgeAgent")
        assert reg is not None and reg.system

        events = engine.events()
        os.kill(agent.pid, signal.SIGKILL)

        async def back_up() -> int:
            async for event in events:
                if event.name == "edgeAgent" and event.action == "start":
                    return (await engine.inspect("edgeAgent")).pid or 0
            return 0

        new_pid = await asyncio.wait_for(back_up(), 15)
        assert new_pid and new_pid != agent.pid
        assert rt.parts.runtime.agent_restarts >= 1
        assert (await engine.inspect("deployed")).state == "running"


HANDOFF = textwrap.dedent("""
    import http.client, json, os, socket, sys, time, urllib.parse
    path = urllib.parse.urlparse(os.environ["IOTEDGE_WORKLOADURI"]).path
    name, gen = os.environ["IOTEDGE_MODULEID"], os.environ["IOTEDGE_MODULEGENERATIONID"]
    body = json.dumps({"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="})
    url = f"/modules/{name}/genid/{gen}/sign?api-version=2019-01-30"
    class C(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(path)
    def call(c):
        c.request("POST", url, body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse(); print("RESULT " + json.dumps({"status": r.status, "body": json.loads(r.read())}), flush=True)
    if os.fork() == 0:
        c = C("localhost"); call(c)  # the kernel records this child's pid for the connection
        first = os.getpid()
        if os.fork() == 0:
            while True:  # the connection outlives the process the kernel vouched for
                try:
                    os.kill(first, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.01)
            call(c)
            print("DONE", flush=True)
        os._exit(0)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(3600)
""")



async def test_a_connection_handed_to_another_process_is_refused(rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    """The pid the kernel reported at connect time exits; the same connection, used by a process the pid could
    be recycled for, is refused at still_alive."""
    await mgmt.create_module({"name": "handoff", "imagePullPolicy": "never", "config": {
        "image": sys.executable, "createOptions": {"Cmd": ["-c", HANDOFF]}}})
    await mgmt.action("handoff", "start")
    first, second = await module_results(rt.parts.engine, "handoff")
    assert first["status"] == 200
    assert second["status"] == 403 and "still_alive" in second["body"]["message"]


async def test_stop_policy_stops_a_module_whose_binary_changed(request: pytest.FixtureRequest,
                                                               public_dir: Path) -> None:
    doc = {"hostname": "edge1", "edgeward": {"integrity": {"policy": "stop", "period_seconds": 3600}}}
    async with serve_runtime(request, public_dir, _engine(public_dir), doc) as rt:
        binary = rt.base / "bin" / "python-stop"
        binary.parent.mkdir(exist_ok=True)
        shutil.copy2(Path(sys.executable).resolve(), binary)
        mgmt = ManagementClient(rt.mgmt_socket)
        try:
            await mgmt.create_module(client_spec("watched", [], image=str(binary)))
            await mgmt.action("watched", "start")
            await module_results(rt.parts.engine, "watched")
            implant = binary.with_name("implant2")
            shutil.copy2(binary, implant)
            with implant.open("ab") as f:
                f.write(b"\0")
            implant.replace(binary)
            findings = await rt.parts.monitor.check()
            assert [f.kind for f in findings] == ["binary_changed"]
            status = await rt.parts.engine.inspect("watched")
            assert status.state in ("stopped", "failed")
            kinds = [r.kind for r in rt.parts.audit.records()]
            assert kinds[-2:] == ["integrity.binary_changed", "integrity.stopped"]
        finally:
            await mgmt.close()


async def test_trust_bundles_carry_the_configured_cas(request: pytest.FixtureRequest, public_dir: Path) -> None:
    def ca_pem(cn: str) -> bytes:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM)

    (public_dir / "upstream.pem").write_bytes(ca_pem("Upstream root"))
    (public_dir / "manifest.pem").write_bytes(ca_pem("Manifest signer"))
    doc = {"hostname": "edge1", "preloaded_certs": {
        "aziot-edged-trust-bundle": f"file://{public_dir / 'upstream.pem'}",
        "aziot-edged-manifest-trust-bundle": f"file://{public_dir / 'manifest.pem'}"}}
    async with serve_runtime(request, public_dir, _engine(public_dir), doc) as rt:
        mgmt = ManagementClient(rt.mgmt_socket)
        try:
            calls = [["GET", "workload", "/trust-bundle?api-version=2022-08-03", None],
                     ["GET", "workload", "/manifest-trust-bundle?api-version=2022-08-03", None]]
            await mgmt.create_module(client_spec("reader", calls))
            await mgmt.action("reader", "start")
            bundle, manifest = await module_results(rt.parts.engine, "reader")
        finally:
            await mgmt.close()
    subjects = [c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(
        bundle["body"]["certificate"].encode())]
    assert subjects == ["CN=Edgeward edge CA", "CN=Upstream root"]
    manifest_cas = x509.load_pem_x509_certificates(manifest["body"]["certificate"].encode())
    assert [c.subject.rfc4514_string() for c in manifest_cas] == ["CN=Manifest signer"]


async def test_a_registration_edited_behind_edgewards_back_is_found(rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    await mgmt.create_module(client_spec("ledger", []))
    assert await rt.parts.monitor.check() == []
    # An attacker with file access points the registration at another binary's measurement.
    db = sqlite3.connect(rt.settings.home / "registrations.db", isolation_level=None)
    db.execute("UPDATE registrations SET image_id='sha256:' || hex(randomblob(32)) WHERE name='ledger'")
    db.close()
    findings = await rt.parts.monitor.check()
    assert ("registration_tampered", "ledger") in {(f.kind, f.module) for f in findings}
    assert rt.parts.audit.records()[-1].kind in ("integrity.registration_tampered", "integrity.binary_changed")
    assert rt.parts.audit.verify().ok
