"""Schemathesis over the UPSTREAM management and workload specs (vendored in upstream/, typo fixed at load), against
the real daemon: the management spec as the edge agent, the workload spec as a registered module (both through their
relay modules, so every call is attested). Each answer must conform: no 5xx, a success status the spec documents, and
a body of the schema the spec gives for that status (aziot-edged's own documented differences admitted, see
specs.AZIOT_DIFFERS)."""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from .conftest import MODULE, SACRIFICE, ContractDevice
from .specs import schema_errors, tolerant_spec

EXAMPLES = int(os.environ.get("EDGEWARD_CONTRACT_EXAMPLES", "12"))
CHECKS = (response_schema_conformance, content_type_conformance)


def _replay(spec_name: str, base: str, device: ContractDevice, pinned: dict[str, str]) -> list[str]:
    schema = schemathesis.from_dict(tolerant_spec(spec_name), base_url="http://localhost")
    version = str(schema.raw_schema["info"]["version"])
    failures: list[str] = []
    calls = 0
    succeeded: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy(), pin=st.booleans())
        def run(case: Any, pin: bool) -> None:
            nonlocal calls
            if case.path_parameters and (pin or spec_name.startswith("workload")):  # a module can only name itself
                case.path_parameters.update({k: v for k, v in pinned.items() if k in case.path_parameters})
            if pin:  # half the cases speak the spec's own version, so they get past the api-version check
                case.query = {**(case.query or {}), "api-version": version}
            if case.formatted_path.endswith("/logs") and (case.query or {}).get("follow") in (True, "true"):
                case.query["follow"] = "false"  # a followed stream never ends; following is tested on its own
            kwargs = case.as_requests_kwargs(base_url="http://localhost")
            kwargs["url"] = kwargs["url"].replace("http://localhost", base, 1)
            response = device.session.request(**kwargs, timeout=30)
            calls += 1
            if response.status_code < 300:
                op_name = case.operation.verbose_name
                succeeded[op_name] = succeeded.get(op_name, 0) + 1
            where = f"{case.method} {case.formatted_path} -> {response.status_code}"
            if response.status_code >= 500:
                failures.append(f"{where}: {response.text[:200]}")
                return
            documented = {int(c) for c in case.operation.definition.raw["responses"] if c != "default"}
            if 200 <= response.status_code < 300 and response.status_code not in documented:
                failures.append(f"{where}: the spec documents {sorted(documented)}")
            if response.status_code == 101 or (not response.content and response.status_code == 204):
                return
            # Error bodies are JSON everywhere (aziot's too), also on routes whose `produces` names only their
            # success type: the content type is checked on successes.
            checks = CHECKS if response.status_code < 400 else (response_schema_conformance,)
            try:
                case.validate_response(response, checks=checks)
            except AssertionError as e:
                failures.append(f"{where}: {' '.join(str(e).split())[:300]}")
            if case.method == "DELETE" or case.formatted_path.endswith(("/stop", "/restart")):
                device.ensure_sacrifice()

        run()
    assert calls > 0
    # The replay reached past validation: most operations answered a success at least once.
    assert len(succeeded) >= len(list(schema.get_all_operations())) // 2, succeeded
    return failures


def test_management_spec_replayed_as_the_edge_agent_conforms(contract_device: ContractDevice) -> None:
    contract_device.ensure_sacrifice()
    failures = _replay("managementVersion_2022_08_03.yaml", contract_device.agent_url, contract_device,
                       {"name": SACRIFICE})
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("spec", ["workloadVersion_2020_07_07.yaml", "workloadVersion_2018_06_28.yaml"])
def test_workload_spec_replayed_as_a_registered_module_conforms(spec: str, contract_device: ContractDevice) -> None:
    failures = _replay(spec, contract_device.module_url, contract_device,
                       {"name": MODULE, "genid": contract_device.module_genid()})
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(("spec", "version"), [("workloadVersion_2020_07_07.yaml", "2020-07-07"),
                                               ("workloadVersion_2018_06_28.yaml", "2018-06-28")])
def test_workload_success_answers_have_the_upstream_shapes(spec: str, version: str,
                                                           contract_device: ContractDevice) -> None:
    """The operations random bodies rarely get through, called with valid ones, as the module itself."""
    s, url, genid = contract_device.session, contract_device.module_url, contract_device.module_genid()
    q = f"api-version={version}"
    base = f"{url}/modules/{MODULE}/genid/{genid}"
    plaintext, iv = "aGVsbG8gd29ybGQ=", "MDEyMzQ1Njc4OWFiY2RlZg=="
    calls: list[tuple[str, Any, int, str]] = [
        (f"{base}/sign?{q}", {"keyId": "primary", "algo": "HMACSHA256", "data": plaintext}, 200, "SignResponse"),
        (f"{base}/encrypt?{q}", {"plaintext": plaintext, "initializationVector": iv}, 200, "EncryptResponse"),
        (f"{base}/certificate/server?{q}", {"commonName": MODULE, "expiration": "2030-01-01T00:00:00Z"}, 201,
         "CertificateResponse"),
        (f"{url}/modules/{MODULE}/certificate/identity?{q}", {"expiration": "2030-01-01T00:00:00Z"}, 201,
         "CertificateResponse"),
    ]
    answers = {}
    for target, body, status, definition in calls:
        r = s.post(target, json=body, timeout=30)
        assert r.status_code == status, (target, r.status_code, r.text)
        assert not schema_errors(spec, definition, r.json()), (definition, schema_errors(spec, definition, r.json()))
        answers[definition] = r.json()
    ciphertext = answers["EncryptResponse"]["ciphertext"]
    r = s.post(f"{base}/decrypt?{q}", json={"ciphertext": ciphertext, "initializationVector": iv}, timeout=30)
    assert r.status_code == 200 and not schema_errors(spec, "DecryptResponse", r.json()), r.text
    assert r.json()["plaintext"] == plaintext
