"""aziot-tpmd's contract against Edgeward's TPM service in the real daemon (`edgeward run` with `[tpm]`, on a fresh
swtpm) over tpmd.sock. From `tpm/aziot-tpm-client-async/src/lib.rs` and `tpm/aziot-tpm-common-http/src/lib.rs`:
api-version 2020-09-01, snake_case fields, bytes as base64 (`http_common::ByteString`), every success a 200
(`parse_expect_ok`), `import_auth_key` answering `{}`. From `tpm/aziot-tpmd/src/http/*.rs`: a POST without a body is
400 "missing request body", an unknown route 404, no api-version 400. (aziot-tpmd answers every TPM failure with 500
"internal error"; Edgeward answers what the caller can act on with a 4xx - see the README's differences.)"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from edgeward.supervise import running_daemon
from tests.contract._aziot import call
from tests.fixtures.swtpm import Swtpm

pytestmark = pytest.mark.asyncio(loop_scope="session")

V = "api-version=2020-09-01"


async def test_tpmd_routes_as_the_tpm_client_calls_them(fresh_swtpm: Swtpm, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[tpm]\ntcti = "{fresh_swtpm.tcti}"\n')
    with running_daemon(["run", "-c", str(config), "--state-dir", str(tmp_path / "s"),
                         "--run-dir", str(tmp_path / "r")]):
        sock = tmp_path / "r" / "tpmd.sock"
        status, body = await call(sock, "GET", f"/get_tpm_keys?{V}")
        assert status == 200 and set(body) == {"endorsement_key", "storage_root_key"}, body
        assert all(len(base64.b64decode(v, validate=True)) > 32 for v in body.values())

        for path in ("/import_auth_key", "/sign_with_auth_key"):
            status, answer = await call(sock, "POST", f"{path}?{V}")
            assert status == 400 and answer == {"message": "missing request body"}, (path, answer)
        status, answer = await call(sock, "POST", f"/import_auth_key?{V}", {"key": "not base64!"})
        assert status == 422, answer  # ByteString's base64 fails to deserialize
        status, answer = await call(sock, "POST", f"/sign_with_auth_key?{V}",
                                    {"data": base64.b64encode(b"x").decode()})
        assert status == 404 and "import_auth_key" in answer["message"], answer  # aziot: 500 "internal error"

        assert (await call(sock, "GET", "/get_tpm_keys"))[0] == 400
        assert (await call(sock, "GET", "/get_tpm_keys?api-version=2021-05-01"))[0] == 400
        assert (await call(sock, "GET", f"/nowhere?{V}"))[0] == 404
