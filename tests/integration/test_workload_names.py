"""What a module can learn and claim through the workload API: server certificates only for DNS names it may
present (wildcards and IP addresses only when the operator allows them; bad names get a 400, never a 500), and a
module list that shows other modules' names and status but nothing of their specs. Real host-process modules,
real sockets."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from edgeward.http import HttpError
from edgeward.runtime.engines.process import ProcessEngine
from edgeward.runtime.mgmt_client import ManagementClient
from tests.fixtures.modules import client_spec, module_results
from tests.fixtures.runtime import serve_runtime

pytestmark = pytest.mark.asyncio(loop_scope="session")

SERVER = "/modules/{name}/genid/{genid}/certificate/server?api-version=2019-01-30"


def server_call(common_name: str) -> list[Any]:
    return ["POST", "workload", SERVER, {"commonName": common_name, "expiration": "2099-01-01T00:00:00Z"}]


def names_in(result: dict[str, Any]) -> set[str]:
    assert result["status"] == 201, result
    leaf = x509.load_pem_x509_certificates(result["body"]["certificate"].encode())[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*sans.get_values_for_type(x509.DNSName), *(str(a) for a in sans.get_values_for_type(x509.IPAddress))}


def refused(result: dict[str, Any], fragment: str) -> None:
    assert result["status"] == 400, result
    assert fragment in result["body"]["message"], result


async def run(public_dir: Path, request: pytest.FixtureRequest, doc: dict[str, Any], name: str,
              calls: list[Any], others: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Serve a runtime with `doc`, start the `others`, then module `name` making `calls`; what it was answered."""
    engine = ProcessEngine(public_dir / "state" / "runtime" / "processes", stop_timeout=2.0, allow_elevated=True)
    async with serve_runtime(request, public_dir, engine, doc) as rt:
        mgmt = ManagementClient(rt.mgmt_socket)
        try:
            for spec in others or []:
                await mgmt.create_module(spec)
                await mgmt.action(spec["name"], "start")
            await mgmt.create_module(client_spec(name, calls))
            await mgmt.action(name, "start")
            return await module_results(rt.parts.engine, name)
        finally:
            await mgmt.close()


async def test_workload_server_cert_refuses_wildcards_ip_literals_and_invalid_names(
        request: pytest.FixtureRequest, public_dir: Path) -> None:
    bad = ["*.example.com", "10.0.0.1", "::1", "ünïcode.example", "bad name.example", "a..b", "-lead.example",
           "foo.*.example", "10.1", "0x7f000001", "trailing.", "x" * 65, "tab\tname"]
    doc = {"hostname": "edge-names", "edgeward": {"runtime": {"server_cert_names": {"certprobe": ["sensor.local"]}}}}
    results = await run(public_dir, request, doc, "certprobe",
                        [server_call("sensor.local"), *(server_call(n) for n in bad)])
    good, *refusals = results
    # The names a server certificate carries: the commonName and the module's name (the device's host name only
    # for the edge hub).
    assert names_in(good) == {"sensor.local", "certprobe"}
    for name, result in zip(bad, refusals, strict=True):
        assert result["status"] == 400, (name, result)
    wildcard, ipv4, ipv6, idn, space, empty_label, lead, inner_star, numeric, hexa, dot, long, tab = refusals
    refused(wildcard, "server_cert_allow_wildcards")
    refused(ipv4, "server_cert_allow_ip_addresses")
    refused(ipv6, "server_cert_allow_ip_addresses")
    refused(idn, "ASCII")
    for result in (space, empty_label, lead, inner_star, dot, tab):
        assert "not a DNS name" in result["body"]["message"] or "ASCII" in result["body"]["message"], result
    refused(numeric, "numeric label")
    refused(hexa, "numeric label")
    refused(long, "at most 64")


async def test_workload_server_cert_wildcards_and_ip_addresses_when_configured(
        request: pytest.FixtureRequest, public_dir: Path) -> None:
    names = ["*.sensors.example", "10.0.0.7", "fd00::7", "fe80::1%eth0", "*.com", "*.ünïcode.example"]
    doc = {"hostname": "edge-names", "edgeward": {"runtime": {"server_cert_allow_wildcards": True,
                                                              "server_cert_allow_ip_addresses": True,
                                                              "server_cert_names": {"cert_probe": names}}}}
    wildcard, ipv4, ipv6, zoned, bare_star, idn = await run(
        public_dir, request, doc, "cert_probe",
        [server_call("*.sensors.example"), server_call("10.0.0.7"), server_call("fd00::7"),
         server_call("fe80::1%eth0"), server_call("*.com"), server_call("*.ünïcode.example")])
    # "cert_probe" is no DNS label: the certificate does not carry the module's name.
    assert names_in(wildcard) == {"*.sensors.example"}
    assert names_in(ipv4) == {"10.0.0.7"}
    assert str(ipaddress.ip_address("fd00::7")) in names_in(ipv6)
    refused(zoned, "zone")
    refused(bare_star, "not a DNS name")
    refused(idn, "ASCII")


async def test_workload_module_list_shows_names_and_status_but_no_specs(request: pytest.FixtureRequest,
                                                                       public_dir: Path) -> None:
    secretive = client_spec("secretive", [])
    secretive["config"]["env"].append({"key": "DB_PASSWORD", "value": "hunter2-do-not-share"})
    secretive["config"]["settings"]["createOptions"]["Labels"] = {"token": "create-options-secret"}
    (listing,) = await run(public_dir, request, {"hostname": "edge-names"}, "lister",
                           [["GET", "workload", "/modules?api-version=2020-07-07", None]], [secretive])
    assert listing["status"] == 200, listing
    raw = repr(listing["body"])
    assert "hunter2-do-not-share" not in raw and "create-options-secret" not in raw and "EDGEWARD_TEST_CALLS" not in raw
    modules = {m["name"]: m for m in listing["body"]["modules"]}
    assert set(modules) == {"secretive", "lister"}
    for module in modules.values():
        # What IoT Edge's ModuleDetails requires (workloadVersion_2020-07-07.yaml), and nothing else.
        assert set(module) == {"id", "name", "type", "config", "status"}
        assert module["config"] == {"settings": {}}
        assert module["status"]["runtimeStatus"]["status"] == "running"


async def test_workload_server_cert_only_for_names_the_module_holds(request: pytest.FixtureRequest,
                                                                   public_dir: Path) -> None:
    """A module cannot get a certificate downstream devices would take for the edge hub, nor one for another
    module's name; the edge hub holds the device's host names."""
    doc = {"hostname": "edge-names", "local_gateway_hostname": "gw.example"}
    engine = ProcessEngine(public_dir / "state" / "runtime" / "processes", stop_timeout=2.0, allow_elevated=True)
    async with serve_runtime(request, public_dir, engine, doc) as rt:
        mgmt = ManagementClient(rt.mgmt_socket)
        try:
            specs = [client_spec("victim", []),
                     client_spec("edgeHub", [server_call("edge-names")]),
                     # named like the device: its own name is the device's, which only the edge hub holds
                     client_spec("Edge-Names", [server_call("Edge-Names")]),
                     client_spec("intruder", [server_call("intruder"), server_call("edge-names"),
                                              server_call("gw.example"), server_call("edgeHub"),
                                              server_call("victim"), server_call("anything.example")])]
            for spec in specs:
                await mgmt.create_module(spec)
                await mgmt.action(spec["name"], "start")
            own, hostname, gateway, hub, other, unlisted = await module_results(rt.parts.engine, "intruder")
            (hub_cert,) = await module_results(rt.parts.engine, "edgeHub")
            (device_named,) = await module_results(rt.parts.engine, "Edge-Names")
            # Names differing only in case are one host name: a second such module is refused.
            with pytest.raises(HttpError) as twin:
                await mgmt.create_module(client_spec("VICTIM", []))
            assert twin.value.status == 409 and "letter case" in twin.value.message
        finally:
            await mgmt.close()
    assert names_in(own) == {"intruder"}
    for result in (hostname, gateway, hub, other, unlisted):
        assert result["status"] == 403 and "may not hold the name" in result["body"]["message"], result
    # local_gateway_hostname names the parent device (nested edge), not this one: a child's edgeHub holding it
    # could pass for its parent to the devices below
    assert names_in(hub_cert) == {"edge-names", "edgeHub"}
    assert device_named["status"] == 403 and "may not hold the name" in device_named["body"]["message"]
