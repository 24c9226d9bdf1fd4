"""The request log of a real daemon at debug level: one line per request on every socket (keys, certs, identity,
TPM, management, workload) with the service, method, route template, status, milliseconds and the caller as the
access guard knows it; a refusal is one INFO line; no query string, path id or secret shows."""

from __future__ import annotations

import asyncio
import base64
import os
import re
from pathlib import Path

import pytest

from edgeward.http import UnixClient
from edgeward.http.errors import HttpError
from edgeward.keys.client import KeysClient
from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.supervise import start_daemon, stop_daemon
from tests.fixtures.modules import ELEVATED, client_spec, logs_until
from tests.fixtures.peers import as_uid_async
from tests.fixtures.swtpm import Swtpm

pytestmark = pytest.mark.asyncio(loop_scope="session")

LINE = re.compile(r" DEBUG edgeward\.requests: (?P<service>\S+) (?P<method>[A-Z]+) (?P<route>.+?) -> (?P<status>\S+) "
                  r"in (?P<ms>\d+\.\d) ms; caller (?P<caller>.+)$")
NOBODY = 65534
SECRET_DATA = base64.b64encode(b"sas-data-that-must-not-show").decode()


def _requests(text: str) -> list[dict[str, str]]:
    return [m.groupdict() for line in text.splitlines() if (m := LINE.search(line))]


def _one(lines: list[dict[str, str]], service: str, method: str, route: str) -> dict[str, str]:
    found = [x for x in lines if (x["service"], x["method"], x["route"]) == (service, method, route)]
    assert len(found) == 1, (service, method, route, lines)
    return found[0]


async def test_a_debug_run_logs_every_request_with_route_status_caller_and_time_and_each_refusal_at_info(
        fresh_swtpm: Swtpm, public_dir: Path) -> None:
    config = public_dir / "config.toml"
    config.write_text(f'{ELEVATED}[tpm]\ntcti = "{fresh_swtpm.tcti}"\n')  # its module runs as root
    run, log = public_dir / "run", public_dir / "daemon.log"
    loop = asyncio.get_running_loop()
    daemon = await loop.run_in_executor(None, lambda: start_daemon(
        ["-vv", "run", "-c", str(config), "--state-dir", str(public_dir / "state"), "--run-dir", str(run)],
        env={**os.environ, "EDGEWARD_LOG_LEVEL": "DEBUG"}, log_path=log))
    try:
        keys = KeysClient(run / "keyd.sock")
        try:
            await keys.create_key_pair_if_not_exists("reqlog-key", "ec-p256")
        finally:
            await keys.close()
        async with UnixClient(run / "certd.sock", "2020-09-01") as certd:
            with pytest.raises(HttpError):
                await certd.request("GET", "/certificates/no-such-cert")
        async with UnixClient(run / "identityd.sock", "2020-09-01") as identityd:
            try:
                await identityd.request("GET", "/identities/identity")
            except HttpError:
                pass  # not provisioned: any answer is a request to log
        async with UnixClient(run / "tpmd.sock", "2020-09-01") as tpmd:
            await tpmd.request("GET", "/get_tpm_keys")
        async with UnixClient(run / "keyd.sock", "2020-09-01") as keyd:
            with pytest.raises(HttpError):
                await keyd.request("GET", "/no/such/route?token=query-secret")
        mgmt = ManagementClient(run / "mgmt" / "mgmt.sock")
        try:
            calls = [["POST", "workload", "/modules/{name}/genid/{genid}/sign?api-version=2019-01-30",
                      {"keyId": "primary", "algo": "HMACSHA256", "data": SECRET_DATA}]]
            await mgmt.create_module(client_spec("reqlog", calls))
            await mgmt.action("reqlog", "start")
            seen = await logs_until(mgmt, "reqlog", b"DONE")
            assert b'"status": 200' in seen, seen
        finally:
            await mgmt.close()
        status, _ = await as_uid_async(NOBODY, run / "mgmt" / "mgmt.sock", "GET", "/modules?api-version=2022-08-03")
        assert status == 403
    finally:
        await loop.run_in_executor(None, stop_daemon, daemon)
    text = log.read_text(errors="replace")
    lines = _requests(text)
    assert all(float(x["ms"]) >= 0 for x in lines)

    host = r"pid \d+ uid 0 \(host; host root, (host user, )?service user\)"
    assert re.fullmatch(host, _one(lines, "keyd", "POST", "/keypair")["caller"])
    assert _one(lines, "keyd", "POST", "/keypair")["status"] == "200"
    assert _one(lines, "certd", "GET", "/certificates/{certId}")["status"] == "400"  # a missing cert, as aziot-certd answers
    assert re.fullmatch(host, _one(lines, "identityd", "GET", "/identities/identity")["caller"])
    assert _one(lines, "tpmd", "GET", "/get_tpm_keys")["status"] == "200"
    sign = _one(lines, "workload", "POST", "/modules/{name}/genid/{genid}/sign")
    assert sign["status"] == "200" and re.fullmatch(r"pid \d+ uid 0 \(module reqlog; module\)", sign["caller"])
    created = _one(lines, "mgmt", "POST", "/modules")
    assert created["status"] == "201" and re.fullmatch(host, created["caller"]), created
    refused = [x for x in lines if x["service"] == "mgmt" and x["status"] == "403"]
    assert len(refused) == 1 and re.fullmatch(rf"pid \d+ uid {NOBODY} \(host; no kind the table knows\)",
                                              refused[0]["caller"]), refused
    no_route = _one(lines, "keyd", "GET", "(no route) '/no/such/route'")
    assert no_route["status"] == "404"

    refusal_lines = [line for line in text.splitlines() if "edgeward.refusals" in line]
    assert len(refusal_lines) == 1 and " INFO edgeward.refusals: refused GET /modules on mgmt: " in refusal_lines[0] \
        and f"uid {NOBODY}" in refusal_lines[0], refusal_lines
    request_lines = [line for line in text.splitlines() if "edgeward.requests" in line]
    for leak in ("api-version", "query-secret", "reqlog-key", "no-such-cert", SECRET_DATA, "sr=", "sig="):
        assert not [line for line in request_lines if leak in line], leak
