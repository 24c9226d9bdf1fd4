"""The edges the upstream contracts leave to the implementation, as aziot-edged handles them: times the agent passes
through from its direct methods, names at the limit, clients that leave, names no certificate can carry. Every call
goes through a relay module, so it is attested as the edge agent or as the module."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import pytest

from .conftest import MODULE, PROBLEM_SIGNS, ContractDevice, relay_spec, wait_for
from .specs import schema_errors

API = "api-version=2022-08-03"


def _daemon_log_problems(device: ContractDevice, start: int) -> list[str]:
    text = device.log_path.read_bytes()[start:].decode(errors="replace")
    return [line for line in text.splitlines()
            if any(sign in line for sign in PROBLEM_SIGNS)]


@pytest.mark.parametrize("query", ["since=10m", "since=1d", "since=2%20days%203%20hours", "since=1h30m",
                                   "since=1569600000", "since=2019-09-27T16:00:00%2B00:00", "since=0",
                                   "until=5%20minutes", "since=1%20week&until=2030-01-01T00:00:00Z"])
def test_module_logs_and_support_bundle_take_since_until_in_every_form_aziot_edged_takes(
        query: str, contract_device: ContractDevice) -> None:
    s, url = contract_device.session, contract_device.agent_url
    logs = s.get(f"{url}/modules/{MODULE}/logs?{API}&follow=false&{query}", timeout=20)
    assert logs.status_code == 200, logs.text
    bundle = s.get(f"{url}/systeminfo/supportbundle?{API}&{query}", timeout=60)
    assert bundle.status_code == 200, bundle.text
    assert bundle.headers["Content-Type"] == "application/zip" and bundle.content[:2] == b"PK"


@pytest.mark.parametrize("query", ["since=yesterday", "since=10%20parsecs", "since=1.5", "until=99999999999",
                                   "since=2019-13-01T00:00:00Z", "since=", "until=5m%20ago", "since=1000y"])
def test_bad_since_or_until_gets_a_clear_400_on_logs_and_support_bundle(
        query: str, contract_device: ContractDevice) -> None:
    s, url = contract_device.session, contract_device.agent_url
    for path in (f"/modules/{MODULE}/logs?{API}&{query}", f"/systeminfo/supportbundle?{API}&{query}"):
        r = s.get(url + path, timeout=20)
        assert r.status_code == 400, (path, r.status_code, r.text)
        message = r.json()["message"]
        assert message.startswith("invalid parameter: ") and ("duration" in message or "out of range" in message)


def test_module_with_a_128_character_name_is_created_started_and_served_on_its_workload_socket(
        contract_device: ContractDevice) -> None:
    """The longest name IoT Hub and the agent allow: its workload socket path would pass the kernel's limit, so it
    lives in a directory named by a hash; the module still reaches it and is attested as itself."""
    s, url = contract_device.session, contract_device.agent_url
    name = "long-" + "x" * 118 + "-name"
    assert len(name) == 128
    relay = contract_device.base / "relays" / "long.sock"
    identity = s.post(f"{url}/identities?{API}", json={"moduleId": name, "managedBy": "IotEdge"}, timeout=20)
    assert identity.status_code == 200, identity.text
    created = s.post(f"{url}/modules?{API}", json=relay_spec(name, relay, "IOTEDGE_WORKLOADURI"), timeout=20)
    assert created.status_code == 201, created.text
    try:
        started = s.post(f"{url}/modules/{name}/start?{API}", timeout=20)
        assert started.status_code == 204, started.text
        wait_for(relay, "the long-named module's relay")
        genid = identity.json()["generationId"]
        signed = s.post(f"http+unix://{quote(str(relay), safe='')}/modules/{name}/genid/{genid}/sign?{API}",
                        json={"keyId": "primary", "algo": "HMACSHA256", "data": "aGVsbG8="}, timeout=20)
        assert signed.status_code == 200, signed.text
        assert set(signed.json()) == {"digest"}
        # Another module cannot use it: the contract module, naming the long module, is refused.
        other = s.post(f"{contract_device.module_url}/modules/{name}/genid/{genid}/sign?{API}",
                       json={"keyId": "primary", "algo": "HMACSHA256", "data": "aGVsbG8="}, timeout=20)
        assert other.status_code in (401, 403), other.text
    finally:
        s.delete(f"{url}/modules/{name}?{API}", timeout=20)
        s.delete(f"{url}/identities/{name}?{API}", timeout=20)


def test_module_name_past_128_characters_is_refused_with_a_4xx(contract_device: ContractDevice) -> None:
    s, url = contract_device.session, contract_device.agent_url
    spec = relay_spec("y" * 129, contract_device.base / "relays" / "never.sock", "IOTEDGE_WORKLOADURI")
    r = s.post(f"{url}/modules?{API}", json=spec, timeout=20)
    assert 400 <= r.status_code < 500 and "module name" in r.json()["message"], r.text


def test_client_that_stops_following_module_logs_leaves_no_traceback_in_the_daemon_log(
        contract_device: ContractDevice) -> None:
    s, url = contract_device.session, contract_device.agent_url
    chatty = {"name": "chatty", "type": "docker", "imagePullPolicy": "never",
              "config": {"settings": {"image": __import__("sys").executable, "createOptions": {"Cmd": [
                  "-c", "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.01)"]}}}}
    assert s.post(f"{url}/modules?{API}", json=chatty, timeout=20).status_code == 201
    start = contract_device.log_path.stat().st_size
    try:
        assert s.post(f"{url}/modules/chatty/start?{API}", timeout=20).status_code == 204
        for _ in range(3):  # the agent follows, reads a little, and drops the connection
            with s.get(f"{url}/modules/chatty/logs?{API}&follow=true&tail=0", stream=True, timeout=20) as r:
                assert r.status_code == 200
                got = b""
                for chunk in r.raw.stream(64, decode_content=False):
                    got += chunk
                    if b"tick" in got:
                        break
                assert b"tick" in got
            # closing the response closed the relay's connection, and the relay closes the daemon's side
        # The daemon keeps writing ticks into the dead streams until it notices; give it a bounded while to do so.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and not _daemon_log_problems(contract_device, start):
            time.sleep(0.1)
        assert not _daemon_log_problems(contract_device, start), _daemon_log_problems(contract_device, start)
        # ... and it still serves.
        assert s.get(f"{url}/modules/chatty?{API}", timeout=20).status_code == 200
    finally:
        s.delete(f"{url}/modules/chatty?{API}", timeout=20)


@pytest.mark.parametrize("common_name", ["ünïcode.example", "日本.example", "\udc80bad", "xn--nxasmq6b.example\u200b",
                                         "caf\u00e9"])
def test_server_certificate_with_a_non_ascii_common_name_is_a_clear_400(
        common_name: str, contract_device: ContractDevice) -> None:
    """aziot-edged puts any commonName into an OpenSSL DNS SAN and fails with a 500 for names that cannot be one;
    Edgeward says why with a 400 (the xn-- form of an internationalized name is what a certificate carries)."""
    start = contract_device.log_path.stat().st_size
    genid = contract_device.module_genid()
    body = json.dumps({"commonName": common_name, "expiration": "2030-01-01T00:00:00Z"})  # \\u escapes, as JSON
    for data in (body.encode(), body.encode().decode("unicode_escape", errors="ignore").encode("utf-8", "replace")):
        r = contract_device.session.post(
            f"{contract_device.module_url}/modules/{MODULE}/genid/{genid}/certificate/server?api-version=2020-07-07",
            data=data, headers={"Content-Type": "application/json"}, timeout=20)
        message = r.json()["message"]
        if r.status_code == 422:  # a lone surrogate escape: not a character at all, refused with the body
            assert "surrogate" in message and "\\udc80" in body, (common_name, message)
            continue
        assert r.status_code == 400, (common_name, r.status_code, r.text)
        assert "ASCII" in message or "not a DNS name" in message
    assert not _daemon_log_problems(contract_device, start), _daemon_log_problems(contract_device, start)


def test_collection_routes_answer_with_and_without_the_trailing_slash_as_aziot_edged(
        contract_device: ContractDevice) -> None:
    """aziot-edged matches `/modules/` and `/identities/` (management) and `/modules/` (workload) as well as the bare
    paths; the alias keeps the route's api-version check and its access rule."""
    s = contract_device.session
    agent, module = contract_device.agent_url, contract_device.module_url
    for url, path in ((agent, "/modules"), (agent, "/identities"), (module, "/modules")):
        bare, slashed = (s.get(f"{url}{p}?{API}", timeout=20) for p in (path, path + "/"))
        assert bare.status_code == slashed.status_code == 200, (path, slashed.text)
        assert bare.json().keys() == slashed.json().keys()
        unversioned = s.get(f"{url}{path}/", timeout=20)
        assert unversioned.status_code == 400 and "api-version" in unversioned.json()["message"]
    spec = relay_spec("slashmod", contract_device.base / "relays" / "slash.sock", "IOTEDGE_WORKLOADURI")
    created = s.post(f"{agent}/modules/?{API}", json=spec, timeout=20)
    assert created.status_code == 201, created.text
    assert s.delete(f"{agent}/modules/slashmod?{API}", timeout=20).status_code == 204


@pytest.mark.parametrize("policy", ["On-Create", "Never", "on-create", "never", "NEVER", "oN-cReAtE"])
def test_image_pull_policy_is_read_in_any_letter_case_and_not_echoed(policy: str,
                                                                     contract_device: ContractDevice) -> None:
    """aziot-edged lower-cases the policy before matching it (edgelet-settings ImagePullPolicy::from_str) and its
    ModuleDetails carry no policy; the spec's enum and the agent say On-Create and Never."""
    s, url = contract_device.session, contract_device.agent_url
    spec = relay_spec("policymod", contract_device.base / "relays" / "policy.sock", "IOTEDGE_WORKLOADURI", policy)
    created = s.post(f"{url}/modules?{API}", json=spec, timeout=20)
    try:
        assert created.status_code == 201, created.text
        for answer in (created.json(), s.get(f"{url}/modules/policymod?{API}", timeout=20).json()):
            assert not schema_errors("managementVersion_2022_08_03.yaml", "ModuleDetails", answer)
            assert "imagePullPolicy" not in json.dumps(answer)
        updated = s.put(f"{url}/modules/policymod?{API}", json=spec, timeout=20)
        assert updated.status_code == 201, updated.text
    finally:
        s.delete(f"{url}/modules/policymod?{API}", timeout=20)


def test_unknown_image_pull_policy_is_refused_naming_the_field(contract_device: ContractDevice) -> None:
    spec = relay_spec("policymod", contract_device.base / "relays" / "policy.sock", "IOTEDGE_WORKLOADURI", "Always")
    r = contract_device.session.post(f"{contract_device.agent_url}/modules?{API}", json=spec, timeout=20)
    assert 400 <= r.status_code < 500 and "imagePullPolicy" in r.json()["message"], r.text
