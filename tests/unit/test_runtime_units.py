"""Pure parts of the runtime: module specs, the edge CA table, registrations, log framing, process pinning."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeward.attest.pin import ProcessGone, parse_start_time, pin, start_time
from edgeward.config.problems import Problems
from edgeward.runtime.edge_ca import EDGE_CA_CERT_ID, EDGE_CA_KEY_ID
from edgeward.runtime.edge_ca_config import apply_edge_ca
from edgeward.runtime.engine import LogChunk
from edgeward.runtime.mgmt_wire import frame
from edgeward.runtime.model import parse_module_config, valid_module_name
from edgeward.runtime.registry import Registration, Registry
from edgeward.runtime.settings import parse_runtime_settings


def test_module_spec_every_problem_at_once() -> None:
    p = Problems()
    got = parse_module_config({"name": "../etc", "type": "vm", "config": {"image": "", "createOptions": "{bad"},
                               "imagePullPolicy": "sometimes", "env": {"A=B": "x"}}, p, "body")
    assert got is None
    joined = "\n".join(p.items)
    for where in ("body.name", "body.type", "body.config.image", "body.config.createOptions", "body.imagePullPolicy",
                  "body.env.A=B"):
        assert where in joined, where


def test_module_spec_accepts_both_env_shapes_and_string_create_options() -> None:
    p = Problems()
    a = parse_module_config({"name": "temp-sensor", "config": {"image": "x:1", "createOptions": '{"User": "1"}'},
                             "env": [{"key": "A", "value": "1"}]}, p, "m")
    b = parse_module_config({"name": "temp-sensor", "config": {"image": "x:1", "createOptions": {"User": "1"}},
                             "env": {"A": {"value": "1"}}}, p, "m")
    assert not p.items
    assert a == b
    assert a is not None and a.create_options == {"User": "1"} and a.env == {"A": "1"}
    assert a.to_wire()["config"]["env"] == [{"key": "A", "value": "1"}]
    assert "auth" not in a.to_wire()["config"]["settings"]


def test_edge_agents_wire_form_is_read_and_written() -> None:
    """What the edge agent sends: image and createOptions under config.settings, env under config."""
    p = Problems()
    got = parse_module_config({"name": "edgeHub", "type": "docker", "imagePullPolicy": "on-create", "config": {
        "settings": {"image": "mcr.microsoft.com/azureiotedge-hub:1.5", "createOptions": {"User": "1000"}},
        "env": [{"key": "UpstreamProtocol", "value": "AmqpWs"}]}}, p, "body")
    assert not p.items and got is not None
    assert got.image.endswith("hub:1.5") and got.create_options == {"User": "1000"}
    assert got.env == {"UpstreamProtocol": "AmqpWs"}
    wire = got.to_wire()
    assert wire["config"]["settings"]["image"] == got.image and wire["config"]["env"][0]["key"] == "UpstreamProtocol"
    bad = Problems()
    parse_module_config({"name": "x1", "config": {"settings": {"image": ""}}}, bad, "body")
    assert bad.items and bad.items[0].startswith("body.config.settings.image")


@pytest.mark.parametrize("name", ["edgeAgent", "a", "temp.sensor-1_x"])
def test_valid_names(name: str) -> None:
    assert valid_module_name(name)


@pytest.mark.parametrize("name", ["", "..", "a/b", "a..b", "-x", "a b", "x" * 129, "a%2fb", "$edgeAgent"])
def test_invalid_names(name: str) -> None:
    assert not valid_module_name(name)


def test_edge_ca_quickstart_is_a_renewed_self_signed_ca() -> None:
    p = Problems()
    doc = apply_edge_ca({"edge_ca": {"auto_generated_edge_ca_expiry_days": 7}}, p)
    entry = doc["cert_issuance"][EDGE_CA_CERT_ID]
    assert entry["method"] == "self_signed" and entry["expiry_days"] == 7 and entry["ca"] is True
    assert entry["auto_renew"]["rotate_key"] is True and entry["key_id"] == EDGE_CA_KEY_ID
    assert not p.items


def test_edge_ca_preloaded_and_bad() -> None:
    p = Problems()
    doc = apply_edge_ca({"edge_ca": {"cert": "file:///c.pem", "pk": "file:///k.pem"}}, p)
    assert doc["preloaded_certs"][EDGE_CA_CERT_ID] == "file:///c.pem"
    assert doc["preloaded_keys"][EDGE_CA_KEY_ID] == "file:///k.pem"
    assert EDGE_CA_CERT_ID not in doc["cert_issuance"]
    p2 = Problems()
    apply_edge_ca({"edge_ca": {"cert": "file:///c.pem"}}, p2)
    apply_edge_ca({"edge_ca": {"method": "magic"}}, p2)
    assert len(p2.items) == 2


def test_runtime_settings_from_super_config(tmp_path: Path) -> None:
    p = Problems()
    s = parse_runtime_settings({
        "hostname": "dev1", "moby_runtime": {"uri": "unix:///var/run/docker.sock", "network": "host"},
        "agent": {"name": "edgeAgent", "type": "docker", "config": {"image": "agent:1.5"}, "env": {"A": "b"}},
        "watchdog": {"max_retries": 3}}, tmp_path, tmp_path / "run", p)
    assert not p.items
    assert s.engine == "docker" and s.network == "host" and s.watchdog_max_retries == 3
    assert s.agent is not None and s.agent.image == "agent:1.5" and s.agent.env == {"A": "b"}
    assert s.gateway_hostname == "dev1"
    bad = Problems()
    parse_runtime_settings({"moby_runtime": {"uri": "tcp://1.2.3.4:2375"}, "watchdog": {"max_retries": -1},
                            "edgeward": {"runtime": {"engine": "lxc"}}}, tmp_path, tmp_path, bad)
    assert len(bad.items) == 3


def test_registry_survives_reopen(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.put(Registration("m1", "docker", "abc", "img:1", "sha256:1", "gen1", config={"name": "m1"}))
    reg.set_state("m1", "running")
    reg.close()
    again = Registry(tmp_path)
    got = again.get("m1")
    assert got is not None and got.state == "running" and got.config == {"name": "m1"} and got.created_at > 0
    assert again.by_engine_id("abc") == got
    assert again.by_engine_id("zzz") is None
    again.delete("m1")
    assert again.all() == []
    assert tmp_path.stat().st_mode & 0o077 == 0  # the registry directory is private
    again.close()


def test_log_frames_are_dockers_multiplexing() -> None:
    framed = frame(LogChunk(2, b"oops\n"))
    assert framed[:8] == struct.pack(">BxxxI", 2, 5) and framed[8:] == b"oops\n"


def test_pin_detects_exit_and_reuse() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        pinned = pin(child.pid)
        assert pinned.alive() and pinned.pidfd is not None
        by_start_time = pin(child.pid)
        by_start_time.close()  # as on kernels without pidfds: the start time is what tells
        assert by_start_time.alive()
        by_start_time.started += 1  # as if the pid now belonged to a process started at another time
        assert not by_start_time.alive()
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
    assert not pinned.alive()
    pinned.close()
    with pytest.raises(ProcessGone):
        pin(0)


@given(st.text(alphabet=st.characters(blacklist_characters="\0/", blacklist_categories=("Cs",)), min_size=0,
               max_size=15))
def test_start_time_ignores_odd_command_names(comm: str) -> None:
    line = f"4242 ({comm}) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 0 0".encode()
    assert parse_start_time(line) == 987654


def test_start_time_of_this_process() -> None:
    assert start_time(os.getpid()) == start_time(os.getpid()) > 0


async def test_management_identities_keep_the_hubs_managed_by() -> None:
    """A host agent's identity (managedBy edgeward) must not be reported as IotEdge: the edge agent deletes
    IotEdge-managed identities that are not in its deployment."""
    from edgeward.identity.model import AziotIdentity
    from edgeward.runtime.identities import CloudModuleIdentities
    from edgeward.runtime.mgmt_wire import identity_body

    class Listing:
        async def list_modules(self) -> list[AziotIdentity]:
            return [AziotIdentity("h", "d", "sas", None, module_id="du-agent", gen_id="g1", managed_by="edgeward"),
                    AziotIdentity("h", "d", "sas", None, module_id="edgeHub", gen_id="g2")]

    got = await CloudModuleIdentities(Listing()).list()  # type: ignore[arg-type]
    assert [identity_body(i)["managedBy"] for i in got] == ["edgeward", "IotEdge"]
