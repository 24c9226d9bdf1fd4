"""`edgeward run` with a [tpm] table serves the TPM service on tpmd.sock, on a real swtpm."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from edgeward.http import UnixClient
from edgeward.supervise import running_daemon
from tests.fixtures.swtpm import Swtpm

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_run_serves_the_tpm_service_when_configured(fresh_swtpm: Swtpm, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[tpm]\ntcti = "{fresh_swtpm.tcti}"\n')
    with running_daemon(["run", "-c", str(config), "--state-dir", str(tmp_path / "s"),
                         "--run-dir", str(tmp_path / "r")]):
        async with UnixClient(tmp_path / "r" / "tpmd.sock", "2020-09-01") as client:
            _, raw = await client.request("GET", "/get_tpm_keys")
    keys = json.loads(raw)
    assert set(keys) == {"endorsement_key", "storage_root_key"}
    assert all(len(base64.b64decode(v)) > 32 for v in keys.values())
