"""IoT Edge 1.5's device SAS key held in a PKCS#11 token, as an operator writes it in config.toml
(``device_id_pk = { uri = "pkcs11:..." }`` for a manual device, ``symmetric_key = { uri = "pkcs11:..." }`` for DPS),
taking effect in the daemon (``edgeward run``) against the hub and DPS emulators: the key is a non-extractable
generic secret object on a SoftHSM2 token, so every SAS signature the emulators accept was computed by the token."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeward.testing.dps_emulator import DpsEmulator
from edgeward.testing.hub_emulator import HubEmulator
from tests.fixtures.config_daemon import daemon, host_agent, logged, pkcs11_keys, until
from tests.fixtures.softhsm import SoftHsm, make_token

pytestmark = [pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.skipif(os.getuid() != 0, reason="the hub emulator listens on port 443")]

# Run in a child process: SoftHSM2 reads SOFTHSM2_CONF once per process, and this token is the test's own.
_CREATE_SECRET = """
import sys
import pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass
lib, token, pin, label = sys.argv[1:5]
with pkcs11.lib(lib).get_token(token_label=token).open(user_pin=pin, rw=True) as session:
    session.create_object({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                           Attribute.LABEL: label, Attribute.VALUE: sys.stdin.buffer.read(), Attribute.TOKEN: True,
                           Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                           Attribute.SIGN: True, Attribute.VERIFY: True})
"""


def secret_in_token(hsm: SoftHsm, key: bytes, label: str) -> str:
    """Create a non-extractable HMAC key object ``label`` holding ``key``; its pkcs11: URI."""
    subprocess.run([sys.executable, "-c", _CREATE_SECRET, hsm.lib, hsm.label, hsm.pin, label], input=key,
                   env=hsm.env(), check=True, capture_output=True, timeout=60)
    return hsm.uri(label)


@pytest.mark.parametrize("key_ok", [True, False], ids=["its-key", "another-key"])
async def test_manual_sas_device_id_pk_in_a_pkcs11_token_signs_the_devices_hub_requests(key_ok: bool,
                                                                                       tmp_path: Path) -> None:
    """The module a host principal stands for is registered in the hub at start, which the hub emulator allows only
    with a SAS token signed by the device's key; with another key in the token nothing gets in."""
    hsm = make_token(tmp_path / "hsm", label="sas-keys")
    async with HubEmulator() as hub:
        key = hub.add_device("hsm-sas", key=os.urandom(32))
        uri = secret_in_token(hsm, key if key_ok else os.urandom(32), "device-sas")
        (tmp_path / "hub-ca.pem").write_bytes(hub.ca_pem)
        config = tmp_path / "config.toml"
        config.write_text(f'hostname = "hsm-sas"\n\n{pkcs11_keys(hsm)}' + textwrap.dedent(f"""
            [provisioning]
            source = "manual"
            iothub_hostname = "{hub.hostname}"
            device_id = "hsm-sas"

            [provisioning.authentication]
            method = "sas"
            device_id_pk = {{ uri = "{uri}" }}
        """) + host_agent(tmp_path / "hub-ca.pem", 3102))
        log = tmp_path / "daemon.log"
        async with daemon(config, tmp_path, env=hsm.env()):
            if key_ok:
                await until(lambda: "host-agent" in hub.modules_of("hsm-sas"), log)
            else:
                await until(logged(log, "could not register the identity of host principal 'host-agent'"), log)
                assert "host-agent" not in hub.modules_of("hsm-sas")


@pytest.mark.parametrize("group", [False, True], ids=["individual", "group"])
async def test_dps_symmetric_key_in_a_pkcs11_token_registers_the_device(group: bool, tmp_path: Path) -> None:
    """DPS accepts the registration only with a SAS token signed by the enrollment's key, here the token's (for a
    group enrollment, the device key derived from the group key in the token by its HMAC); the device then reaches
    the hub it was assigned with the same key (its module registered there)."""
    hsm = make_token(tmp_path / "hsm", label="sas-keys")
    hub = HubEmulator()
    dps = DpsEmulator(hub, polls_before_assigned=1, retry_after=0)
    key = (dps.add_group_enrollment(key=os.urandom(32)) if group
           else dps.add_individual_enrollment("reg-hsm", key=os.urandom(32), device_id="reg-hsm"))
    uri = secret_in_token(hsm, key, "dps-sas")
    async with hub:
        (tmp_path / "cloud-ca.pem").write_bytes(hub.ca_pem)
        config = tmp_path / "config.toml"
        config.write_text(f'hostname = "dps-hsm"\n\n{pkcs11_keys(hsm)}' + textwrap.dedent(f"""
            [provisioning]
            source = "dps"
            global_endpoint = "{dps.endpoint}"
            id_scope = "{dps.scope_id}"

            [provisioning.attestation]
            method = "symmetric_key"
            registration_id = "reg-hsm"
            symmetric_key = {{ uri = "{uri}" }}
            group_enrollment = {str(group).lower()}
        """) + host_agent(tmp_path / "cloud-ca.pem", 3103))
        async with daemon(config, tmp_path, env=hsm.env()):
            await until(lambda: "host-agent" in hub.modules_of("reg-hsm"), tmp_path / "daemon.log")
        assert dps.registrations == 1
