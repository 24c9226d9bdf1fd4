"""Nested edge's small rules, exactly as IoT Edge states them (edgelet-settings' `parent_hostname_resolve`, the
agent's CreateOrUpdateCommand), and the request limits' mapping onto Edgeward's per-caller caps."""

from __future__ import annotations

from pathlib import Path

from edgeward.config.problems import Problems
from edgeward.http.connections import ConnectionLimits
from edgeward.http.limits import max_requests_limiter
from edgeward.runtime.settings import parse_runtime_settings
from edgeward.runtime.upstream import upstream_env


def test_upstream_resolves_in_the_image_and_the_registry_server_address_only_as_a_prefix(tmp_path: Path) -> None:
    doc = {"hostname": "child", "local_gateway_hostname": "parent.example",
           "agent": {"config": {"image": "$upstream:443/azureiotedge-agent:1.5",
                                "auth": {"serveraddress": "$upstream:443", "username": "u", "password": "p"}}}}
    settings = parse_runtime_settings(doc, tmp_path, tmp_path, Problems())
    assert settings.agent is not None
    assert settings.agent.image == "parent.example:443/azureiotedge-agent:1.5"
    assert settings.agent.auth == {"serveraddress": "parent.example:443", "username": "u", "password": "p"}
    assert settings.parent_hostname == "parent.example" and settings.gateway_hostname == "child"
    doc["agent"]["config"] = {"image": "registry.example/x/$upstream:1"}
    assert parse_runtime_settings(doc, tmp_path, tmp_path, Problems()).agent.image == "registry.example/x/$upstream:1"  # type: ignore[union-attr]


def test_gateway_variables_follow_iot_edge() -> None:
    assert upstream_env("$edgeAgent", "child", "parent") == {"IOTEDGE_GATEWAYHOSTNAME": "parent"}
    assert upstream_env("$edgeHub", "child", "parent") == {"IOTEDGE_GATEWAYHOSTNAME": "parent"}
    assert upstream_env("mod", "child", "parent") == {"IOTEDGE_GATEWAYHOSTNAME": "child",
                                                      "IOTEDGE_PARENTHOSTNAME": "parent"}
    assert upstream_env("$edgeAgent", "child", None) == {}
    assert upstream_env("mod", "child", None) == {"IOTEDGE_GATEWAYHOSTNAME": "child"}


def test_max_requests_caps_connections_and_running_requests_never_raises_a_cap() -> None:
    limiter = max_requests_limiter(20)
    assert (limiter.max_in_flight, limiter.max_connections) == (20, 20)
    limits = ConnectionLimits(per_caller=256)
    assert limits.capped(limiter.max_connections).per_caller == 20
    assert limits.capped(1000).per_caller == 256  # the process's own cap stays the ceiling
    default = max_requests_limiter(None)
    assert default.max_connections is None and default.max_in_flight == 64
    assert limits.capped(None) is limits
