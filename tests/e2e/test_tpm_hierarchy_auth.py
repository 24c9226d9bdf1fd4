"""[tpm.hierarchy_authorization] on a TPM whose endorsement and owner hierarchies have passwords (set with
tpm2-tools' tpm2_changeauth on a fresh swtpm): `edgeward run` creates the EK and SRK through the TPM service and
keeps keys in the TPM key backend, with no other place to give the owner password — also in the split deployment,
where the keys service starts alone from the keyd.toml `config apply` wrote and must create the SRK itself."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeward.http import UnixClient
from edgeward.supervise import running_daemon
from tests.fixtures.swtpm import Swtpm

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _changeauth(tpm: Swtpm, hierarchy: str, password: str) -> None:
    subprocess.run(["tpm2_changeauth", "-T", tpm.tcti, "-c", hierarchy, password], check=True,
                   capture_output=True, timeout=30, env={"TSS2_LOG": "all+NONE", "PATH": "/usr/bin:/bin"})


async def test_run_uses_hierarchy_passwords_for_ek_srk_and_tpm_keys(fresh_swtpm: Swtpm, tmp_path: Path) -> None:
    _changeauth(fresh_swtpm, "owner", "world")
    _changeauth(fresh_swtpm, "endorsement", "hello")
    # Without the passwords the TPM refuses: the hierarchies really are protected.
    refused = subprocess.run(["tpm2_createprimary", "-T", fresh_swtpm.tcti, "-C", "o", "-c",
                              str(tmp_path / "x.ctx")], capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "authorization" in refused.stderr.lower() + refused.stdout.lower()
    config = tmp_path / "config.toml"
    config.write_text(f'[tpm]\ntcti = "{fresh_swtpm.tcti}"\n[tpm.hierarchy_authorization]\n'
                      f'endorsement = "hello"\nowner = "world"\n'
                      f'[edgeward.keys]\nbackend = "tpm"\ntpm_tcti = "{fresh_swtpm.tcti}"\n')
    with running_daemon(["run", "-c", str(config), "--state-dir", str(tmp_path / "s"),
                         "--run-dir", str(tmp_path / "r")]):
        async with UnixClient(tmp_path / "r" / "tpmd.sock", "2020-09-01") as tpmd:
            _, raw = await tpmd.request("GET", "/get_tpm_keys")
        keys = json.loads(raw)
        assert all(len(base64.b64decode(keys[k])) > 32 for k in ("endorsement_key", "storage_root_key"))
        async with UnixClient(tmp_path / "r" / "keyd.sock", "2020-09-01") as keyd:
            _, raw = await keyd.request("POST", "/keypair", {"keyId": "in-tpm", "preferredAlgorithms": "ec-p256"})
            handle = json.loads(raw)["keyHandle"]
            digest = base64.b64encode(b"\x01" * 32).decode()
            _, raw = await keyd.request("POST", "/sign", {"keyHandle": handle, "algorithm": "ECDSA",
                                                          "parameters": {"digest": digest}})
        assert len(base64.b64decode(json.loads(raw)["signature"])) > 60


async def test_split_keys_service_creates_its_srk_with_the_owner_password_from_the_tpm_table(
        fresh_swtpm: Swtpm, tmp_path: Path) -> None:
    _changeauth(fresh_swtpm, "owner", "world")
    _changeauth(fresh_swtpm, "endorsement", "hello")
    config = tmp_path / "config.toml"
    config.write_text(f'[tpm]\ntcti = "{fresh_swtpm.tcti}"\n[tpm.hierarchy_authorization]\n'
                      f'endorsement = "hello"\nowner = "world"\n'
                      f'[edgeward.keys]\nbackend = "tpm"\ntpm_tcti = "{fresh_swtpm.tcti}"\n')
    out = tmp_path / "etc"
    subprocess.run([sys.executable, "-m", "edgeward", "config", "apply", "-c", str(config), "--out-dir", str(out)],
                   check=True, capture_output=True, timeout=60)
    common = ["--state-dir", str(tmp_path / "s"), "--run-dir", str(tmp_path / "r")]
    with running_daemon(["serve", "keys", "-c", str(out / "keyd.toml"), *common]):  # first: no SRK yet
        async with UnixClient(tmp_path / "r" / "keyd.sock", "2020-09-01") as keyd:
            _, raw = await keyd.request("POST", "/keypair", {"keyId": "split", "preferredAlgorithms": "ec-p256"})
        assert "keyHandle" in json.loads(raw), raw
        with running_daemon(["serve", "tpm", "-c", str(out / "tpmd.toml"), *common]):
            async with UnixClient(tmp_path / "r" / "tpmd.sock", "2020-09-01") as tpmd:
                _, raw = await tpmd.request("GET", "/get_tpm_keys")
        assert set(json.loads(raw)) == {"endorsement_key", "storage_root_key"}
