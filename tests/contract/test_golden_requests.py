"""Golden requests: exactly what the real clients send (taken from their sources; each file names them), replayed in
order against the real daemon as the caller they come from, with the status and the response shape they accept."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import MODULE, ContractDevice
from .specs import schema_errors

GOLDEN = Path(__file__).resolve().parent / "golden"


def _fill(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(module|genid|python|generationId:[A-Za-z0-9_.-]+)\}", lambda m: values.get(m.group(1), "unknown"), text)


@pytest.mark.parametrize("golden", sorted(p.name for p in GOLDEN.glob("*.json")))
def test_golden_requests_of_real_clients_get_the_status_and_shape_they_accept(
        golden: str, contract_device: ContractDevice) -> None:
    doc = json.loads((GOLDEN / golden).read_text())
    base = contract_device.agent_url if doc["caller"] == "agent" else contract_device.module_url
    values = {"module": MODULE, "genid": contract_device.module_genid(), "python": sys.executable}
    mismatches: list[str] = []
    for req in doc["requests"]:
        filled = json.loads(_fill(json.dumps(req), values))
        data: str | None = filled.get("body_text")
        if filled.get("body") is not None:
            data = json.dumps(filled["body"])
        response = contract_device.session.request(filled["method"], base + filled["path"], data=data,
                                                   headers=filled["headers"], timeout=30)
        where = f"{req['name']}: {req['method']} {req['path']} -> {response.status_code}"
        if response.status_code not in filled["status"]:
            mismatches.append(f"{where}, expected {filled['status']}: {response.text[:300]}")
            continue
        if filled.get("content_type"):
            assert response.headers["Content-Type"].startswith(filled["content_type"]), where
        if filled.get("schema"):
            body: Any = response.json()
            errors = schema_errors(doc["spec"], filled["schema"], body)
            if errors:
                mismatches.append(f"{where}: not a {filled['schema']}: {errors}")
            if filled["schema"] == "Identity":
                values[f"generationId:{body['moduleId']}"] = body["generationId"]
    assert not mismatches, "\n".join(mismatches)
