"""Manual provisioning and the identity API's authorization, over the real socket (no cloud involved: a manually
provisioned device needs none until it manages module identities)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edgeward.http.peercred import Caller
from edgeward.identity.service import IdentityService
from edgeward.keys.model import HmacSha256
from tests.fixtures.identity import serve_identity

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = b"device-key-0123456789abcdef01234"
CS = f"HostName=myhub.azure-devices.net;DeviceId=device-7;SharedAccessKey={base64.b64encode(KEY).decode()}"


def no_hub(*_: object) -> Any:
    raise AssertionError("manual provisioning must not need the hub")


def config(cs: str = CS) -> dict[str, Any]:
    return {
        "hostname": "edge-7",
        "provisioning": {"source": "manual", "connection_string": cs},
        "principal": [
            {"uid": 2001, "name": "device-agent", "idtype": ["device"]},
            {"uid": 2002, "name": "hostdaemon"},
        ],
        "cert_issuance": {"local_ca": {"cert": "trust-bundle", "pk": "local-ca"}},
    }


async def get(socket: Path, path: str) -> tuple[int, Any]:
    async with (aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket))) as s,
                s.get(f"http://identityd{path}") as r):
        return r.status, await r.json()


async def test_manual_sas_device_identity_signs_with_the_connection_string_key(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with serve_identity(request, tmp_path, config(), no_hub) as env:
        status, body = await get(env.socket, "/identities/identity?api-version=2021-12-01")
        assert status == 200
        assert body["type"] == "aziot"
        spec = body["spec"]
        assert (spec["hubName"], spec["deviceId"], spec["auth"]["type"]) == ("myhub.azure-devices.net", "device-7",
                                                                              "sas")
        # the handle signs SAS tokens with the device key, which never left the keys service
        sig = await env.certs_env.keys.sign(spec["auth"]["keyHandle"], HmacSha256(b"sr\n1700000000"))
        assert sig == hmac.new(KEY, b"sr\n1700000000", hashlib.sha256).digest()
        status, body = await get(env.socket, "/identities/provisioning?api-version=2021-12-01")
        assert (status, body) == (200, {"source": "manual", "auth": "sas"})
        status, body = await get(env.socket, "/identities/provisioning?api-version=2020-09-01")
        assert status == 400 and "unsupported api-version" in body["message"]


async def test_principals_see_only_what_their_idtype_allows(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    async with serve_identity(request, tmp_path, config(), no_hub) as env:
        svc: IdentityService = env.service
        agent, daemon, stranger = (Caller(1, uid, uid) for uid in (2001, 2002, 4444))
        identity = await svc.caller_identity(agent)
        assert identity.device_id == "device-7"  # type: ignore[union-attr]
        for caller in (agent, stranger):
            with pytest.raises(Exception, match="may not use this API"):
                svc.require_daemon(caller)
        assert svc.require_daemon(daemon).name == "hostdaemon"
        with pytest.raises(Exception, match="not a principal"):
            await svc.caller_identity(stranger)
        # the trust bundle is public: anyone may read it
        await env.certs_env.service.local_ca()
        status, body = await get(env.socket, "/trust-bundle?api-version=2020-09-01")
        assert status == 200 and body["certificate"].startswith("-----BEGIN CERTIFICATE-----")


async def test_backup_is_used_only_for_the_same_configuration(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    async with serve_identity(request, tmp_path, config(), no_hub) as env:
        assert env.service.device.device_id == "device-7"
    saved = json.loads((tmp_path / "state" / "identityd" / "device.json").read_text())
    assert saved["device"]["device_id"] == "device-7"
    other_key = base64.b64encode(b"another-key-0123456789abcdef0123").decode()
    changed = f"HostName=myhub.azure-devices.net;DeviceId=device-8;SharedAccessKey={other_key}"
    async with serve_identity(request, tmp_path, config(changed), no_hub) as env:
        assert env.service.device.device_id == "device-8"  # re-provisioned, not the stale backup
        handle = await env.service._device_key_handle(env.service.device)
        sig = await env.certs_env.keys.sign(handle, HmacSha256(b"x"))
        assert sig == hmac.new(b"another-key-0123456789abcdef0123", b"x", hashlib.sha256).digest()


async def test_bad_provisioning_config_is_reported_with_its_key_path(tmp_path: Path) -> None:
    from edgeward.config.problems import ConfigError
    from edgeward.identity.settings import parse_identity_settings

    doc = {"provisioning": {"source": "manual", "connection_string": "HostName=h;DeviceId=d"},
           "principal": [{"uid": 5, "name": "a", "idtype": ["robot"]}, {"uid": 6, "name": "a"}]}
    with pytest.raises(ConfigError) as e:
        parse_identity_settings(doc, tmp_path, tmp_path)
    text = str(e.value)
    assert "provisioning.connection_string = <redacted>: expected HostName=...;DeviceId=...;SharedAccessKey=" in text
    assert "lacks SharedAccessKey" in text
    assert "principal[0].idtype" in text and "unique principal names" in text
    assert "device-key" not in text


async def test_local_identity_routes_over_the_socket(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """POST /identities/modules with type local issues an X.509 identity through the certs service (CN
    <module>.<hostname>.<localid domain>, the requested usage); GET ?type=local issues a client one."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    doc = config() | {"localid": {"domain_name": "local.test"}}
    doc["principal"] = [*doc["principal"], {"uid": 2003, "name": "local-agent", "idtype": ["local"]}]
    doc["cert_issuance"] |= {"local-id-agent": {"method": "local_ca"}}
    async with serve_identity(request, tmp_path, doc, no_hub) as env:
        body = {"type": "local", "moduleId": "agent", "localIdOpts": {"type": "x509", "attributes": "server"}}
        async with (aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(env.socket))) as s,
                    s.post("http://identityd/identities/modules?api-version=2021-12-01", json=body) as r):
            created = await r.json()
            assert r.status == 200, created
        assert created["type"] == "local" and created["spec"]["moduleId"] == "agent"
        auth = created["spec"]["auth"]
        cert = x509.load_pem_x509_certificates(auth["certificate"].encode())[0]
        assert cert.subject.rfc4514_string() == "CN=agent.edge-7.local.test"
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.SERVER_AUTH in usage
        assert auth["privateKey"].startswith("-----BEGIN PRIVATE KEY-----")
        # GET ?type=local serves the local identities of local principals only (aziot's rule)
        status, got = await get(env.socket, "/identities/modules/agent?type=local&api-version=2021-12-01")
        assert status == 400 and "local identity for agent doesn't exist" in got["message"]
        status, got = await get(env.socket, "/identities/modules/local-agent?type=local&api-version=2021-12-01")
        assert status == 200
        client_cert = x509.load_pem_x509_certificates(got["spec"]["auth"]["certificate"].encode())[0]
        assert ExtendedKeyUsageOID.CLIENT_AUTH in client_cert.extensions.get_extension_for_class(
            x509.ExtendedKeyUsage).value
        # a caller that is not a daemon principal may not ask for it
        status, refused = await get(env.socket, "/identities/modules/agent?type=bogus&api-version=2021-12-01")
        assert status == 400 and "invalid type: bogus" in refused["message"]


async def test_a_local_identity_asking_for_itself_in_a_loop_adds_no_log_line_per_answer(
        request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every answer is a fresh certificate from the local CA (h/brk12a r04/r06: about 300 INFO lines a second,
    past journald's per-unit limit, which then drops the refusals logged next): its "issued cert" line is logged at
    INFO once an interval, the repeats at DEBUG, and a summary says how many."""
    doc = config() | {"localid": {"domain_name": "local.test"}}
    doc["principal"] = [*doc["principal"], {"uid": 2003, "name": "local-agent", "idtype": ["local"]}]
    path = "/identities/modules/local-agent?type=local&api-version=2021-12-01"
    async with serve_identity(request, tmp_path, doc, no_hub) as env:
        caplog.set_level(logging.DEBUG, logger="edgeward")
        status, _ = await get(env.socket, path)
        assert status == 200
        issued = [r for r in caplog.records if "issued cert 'local-id-local-agent'" in r.getMessage()]
        assert [r.levelno for r in issued] == [logging.INFO]
        caplog.clear()
        for _ in range(40):
            status, _ = await get(env.socket, path)
            assert status == 200
        info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        assert info == [], info  # neither certd nor identityd writes a line at INFO per answer
        assert sum("issued cert 'local-id-local-agent'" in r.getMessage() for r in caplog.records) == 40  # at DEBUG
        env.certs_env.service.issued_log.flush()  # what the end of the interval (or the daemon stopping) does
        summary = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert len(summary) == 1 and summary[0].startswith("40 more 'issued cert' lines in the last") and (
            "'local-id-local-agent' 40" in summary[0]), summary
