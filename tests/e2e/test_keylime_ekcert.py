"""The EK certificate a TPM manufacturer put in NV, end to end: a swtpm authored as a manufacturer does
(`swtpm_setup --create-ek-cert`, signed by a test manufacturer CA), Edgeward (`edgeward run`, as a device runs it) reading it
and registering it, the registrar keeping it, and a tenant with ``require_ek_cert = True`` enrolling the device
only when its ``tpm_cert_store`` trusts that CA. Also the NV reading itself on a real TPM: only a certificate of
the key at the EK handle, chunked, cut to its DER length, under the index's or the owner's authorization.

The keylime services are the session's (tests/fixtures/keylime.py); the device and its TPM are this module's.
"""

from __future__ import annotations

import base64
import datetime
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from tpm2_pytss import ESAPI, ESYS_TR, TPM2_ALG, TPM2B_NV_PUBLIC, TPMA_NV, TPMS_NV_PUBLIC

from edgeward.keylime.tpm_ops import ek_certificate, ek_public
from edgeward.tpm.service import _ek_template, _srk_template
from edgeward.tpm.settings import ENDORSEMENT_KEY_HANDLE
from tests.e2e.test_keylime_agent import _wait_for
from tests.fixtures.keylime import (
    QUOTE_INTERVAL,
    KeylimeDevice,
    KeylimeServices,
    TpmCa,
    cert_store,
    make_tpm_ca,
    manufacture_tpm,
    registrar_record,
    tenant_with,
)
from tests.fixtures.swtpm import Swtpm, running_swtpm

AGENT_UUID = "d432fbb3-d2f1-4a97-9ef7-75bd81c0ec01"
RSA_EK_CERT_INDEX = 0x01C0_0002


@dataclass
class Manufactured:
    tpm: Swtpm
    cert: bytes  # the RSA EK certificate, DER, as swtpm_setup wrote it to its own file
    ca: TpmCa
    foreign: TpmCa  # a CA that signed nothing of this TPM's


@pytest.fixture(scope="module")
def manufactured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manufactured]:
    base = tmp_path_factory.mktemp("ekcert-tpm")
    ca = make_tpm_ca(base / "ca", "Edgeward test TPM manufacturer CA")
    foreign = make_tpm_ca(base / "foreign", "Some other TPM manufacturer CA")
    cert = manufacture_tpm(base / "state", ca, base / "setup")
    with running_swtpm(base / "state") as tpm:
        yield Manufactured(tpm, cert, ca, foreign)


@pytest.fixture(scope="module")
def ek_device(manufactured: Manufactured, keylime_services: KeylimeServices,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeylimeDevice]:
    device = KeylimeDevice(tmp_path_factory.mktemp("ekcert-device"), manufactured.tpm.tcti, AGENT_UUID,
                           keylime_services.registrar_url, keylime_services.ca)
    try:
        device.start()
        yield device
    finally:
        device.stop()
        keylime_services.tenant("-c", "delete", "-u", AGENT_UUID)
        keylime_services.tenant("-c", "regdelete", "-u", AGENT_UUID)


def _strict_tenant(services: KeylimeServices, store: Path, device: KeylimeDevice) -> Any:
    return tenant_with(services, {"require_ek_cert": "True", "tpm_cert_store": str(store)}, "-c", "add", "-u",
                       AGENT_UUID, "--runtime-policy", str(device.policy()))


def _spki(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def test_the_agent_registers_the_ek_certificate_from_nv(ek_device: KeylimeDevice, manufactured: Manufactured,
                                                        keylime_services: KeylimeServices) -> None:
    record = registrar_record(keylime_services, AGENT_UUID)
    assert record is not None, "registered"
    assert base64.b64decode(record["ekcert"]) == manufactured.cert  # byte for byte what the manufacturer wrote
    cert = x509.load_der_x509_certificate(manufactured.cert)
    assert cert.issuer == x509.load_pem_x509_certificate(manufactured.ca.cert.read_bytes()).subject


def test_a_tenant_that_does_not_trust_the_manufacturer_refuses_the_device(
        ek_device: KeylimeDevice, manufactured: Manufactured, keylime_services: KeylimeServices,
        tmp_path: Path) -> None:
    added = _strict_tenant(keylime_services, cert_store(tmp_path / "store", manufactured.foreign), ek_device)
    out = added.stdout + added.stderr
    assert added.returncode != 0, out[-3000:]
    # keylime 7.14's tenant: check_ek fails inside the quote check, so the add stops before the verifier hears of it
    assert "Invalid EK certificate" in out, out[-3000:]
    assert "is invalid for nonce" in out, out[-3000:]
    with pytest.raises(urllib.error.HTTPError) as refused:
        keylime_services.agent_status(AGENT_UUID)
    assert refused.value.code == 404


def test_a_tenant_that_trusts_the_manufacturer_enrols_the_device_and_it_passes(
        ek_device: KeylimeDevice, manufactured: Manufactured, keylime_services: KeylimeServices,
        tmp_path: Path) -> None:
    store = cert_store(tmp_path / "store", manufactured.foreign, manufactured.ca)
    added = _strict_tenant(keylime_services, store, ek_device)
    assert added.returncode == 0, (added.stdout + added.stderr)[-3000:]

    def passing() -> Any:
        status = keylime_services.agent_status(AGENT_UUID)
        assert status["attestation_status"] != "FAIL", status
        return status if status["attestation_status"] == "PASS" and status["attestation_count"] >= 2 else None

    _wait_for("attestations of the device with a certified EK", passing, 12 * QUOTE_INTERVAL)


# the NV reading, on real TPMs, without keylime ------------------------------------------------------------------
def test_only_a_certificate_of_the_key_at_the_ek_handle_is_sent(tmp_path: Path) -> None:
    """The registrar refuses an ekcert for another key than ek_tpm; a key someone else persisted at the EK handle
    (here from the SRK template, in the endorsement hierarchy) is not what the manufacturer certified."""
    ca = make_tpm_ca(tmp_path / "ca", "Edgeward test TPM manufacturer CA")
    cert = manufacture_tpm(tmp_path / "state", ca, tmp_path / "setup")
    with running_swtpm(tmp_path / "state") as tpm:
        ectx = ESAPI(tpm.tcti)
        try:
            assert ek_certificate(ectx) == cert
            ek = ectx.tr_from_tpmpublic(ENDORSEMENT_KEY_HANDLE)
            ectx.evict_control(ESYS_TR.OWNER, ek, ENDORSEMENT_KEY_HANDLE)
            other, *_ = ectx.create_primary(None, _srk_template(), ESYS_TR.ENDORSEMENT)
            ectx.evict_control(ESYS_TR.OWNER, other, ENDORSEMENT_KEY_HANDLE)
            ectx.flush_context(other)
            assert ek_certificate(ectx) is None
        finally:
            ectx.close()


@pytest.mark.parametrize("read_auth", ["index", "owner"])
def test_a_padded_certificate_is_read_in_chunks_and_cut_to_its_length(fresh_swtpm: Swtpm, tmp_path: Path,
                                                                      read_auth: str) -> None:
    """An index larger than its certificate (zero padding after it, as some TPMs ship), readable under its own
    authorization (AUTHREAD, as the EK Credential Profile has it) or only the owner's (OWNERREAD)."""
    ectx = ESAPI(fresh_swtpm.tcti)
    try:
        primary, public, *_ = ectx.create_primary(None, _ek_template(), ESYS_TR.ENDORSEMENT)
        ectx.evict_control(ESYS_TR.OWNER, primary, ENDORSEMENT_KEY_HANDLE)
        ectx.flush_context(primary)
        cert = _certify(make_tpm_ca(tmp_path / "ca", "Self-made TPM CA"), public)
        size = 1800
        attrs = TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.NO_DA
        if read_auth == "index":
            attrs |= TPMA_NV.AUTHREAD
        nv = ectx.nv_define_space(None, TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
            nvIndex=RSA_EK_CERT_INDEX, nameAlg=TPM2_ALG.SHA256, attributes=attrs, dataSize=size)), ESYS_TR.OWNER)
        data = cert + b"\0" * (size - len(cert))
        for offset in range(0, size, 512):
            ectx.nv_write(nv, data[offset:offset + 512], offset, ESYS_TR.OWNER)
        assert len(cert) > 512, "more than one chunk"
        assert ek_certificate(ectx) == cert
        assert ek_public(ectx)  # the key it certifies is the one registered
    finally:
        ectx.close()


def _certify(ca: TpmCa, public: Any) -> bytes:
    key = serialization.load_pem_private_key(ca.key.read_bytes(), None)
    issuer = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    ek_key = serialization.load_pem_public_key(bytes(public.to_pem()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(issuer.subject)
            .public_key(ek_key).serial_number(x509.random_serial_number())  # type: ignore[arg-type]
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    der = cert.public_bytes(serialization.Encoding.DER)
    assert _spki(cert.public_key()) == _spki(ek_key)
    return der
