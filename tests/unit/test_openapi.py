"""The project's OpenAPI documents describe exactly the routes the services serve, with the same api-versions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgeward.certs.routes import routes as certs_routes
from edgeward.http import RouteTable
from edgeward.identity.routes import routes as identity_routes
from edgeward.keys.routes import routes as keys_routes
from edgeward.runtime.mgmt_routes import routes as mgmt_routes
from edgeward.runtime.workload_routes import routes as workload_routes
from edgeward.tpm.routes import routes as tpm_routes

OPENAPI = Path(__file__).resolve().parents[2] / "openapi"


@pytest.mark.parametrize(("doc", "table"), [("keys.yaml", keys_routes), ("certs.yaml", certs_routes), ("identity.yaml", identity_routes),
                          ("tpm.yaml", tpm_routes), ("management.yaml", mgmt_routes),
                          ("workload.yaml", workload_routes)])
def test_openapi_document_matches_the_served_routes(doc: str, table: RouteTable) -> None:
    spec = yaml.safe_load((OPENAPI / doc).read_text())
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    served = {(m, p) for m, p, _ in table.declared()}
    assert documented == served
    enum = set(spec["components"]["parameters"]["apiVersion"]["schema"]["enum"])
    for _, _, versions in table.declared():
        assert versions <= enum
