"""Small parts behind issue 14's reprovisioning, base64 and DN settings, checked on their own."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeward.certs.dn import CN_MAX, DN_FIELDS, DnError, subject_fields, subject_name
from edgeward.config.b64 import decode_key
from edgeward.http.errors import HttpError
from edgeward.identity.hub import HubError
from edgeward.identity.reprovisioning import ReprovisioningPolicy
from edgeward.identity.settings import parse_identity_settings

DPS = {"source": "dps", "global_endpoint": "https://dps.example", "id_scope": "s",
       "attestation": {"method": "tpm", "registration_id": "r"}}
MANUAL = {"source": "manual", "connection_string": "HostName=h.example;DeviceId=d;SharedAccessKey=YWJj"}


@given(st.binary(max_size=96))
def test_base64_keys_decode_with_or_without_padding(key: bytes) -> None:
    padded = base64.b64encode(key).decode()
    assert decode_key(padded) == key
    assert decode_key(padded.rstrip("=")) == key


@given(st.text(alphabet="ABCDabcd0189+/=-_ \n", max_size=24))
def test_base64_keys_refuse_what_no_padding_makes_base64(text: str) -> None:
    try:
        strict = base64.b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4), validate=True)
        well_formed = text.count("=") == 0 or (len(text) % 4 == 0 and text.rstrip("=").count("=") == 0)
    except (binascii.Error, ValueError):
        strict, well_formed = None, False
    if strict is not None and well_formed and len(text.rstrip("=")) % 4 != 1:
        assert decode_key(text) == strict
    else:
        with pytest.raises(ValueError):
            decode_key(text)


def _policy(mode: str, prov: dict[str, object], tmp_path: Path, interval: float = 60.0) -> ReprovisioningPolicy:
    settings = parse_identity_settings({"auto_reprovisioning_mode": mode, "provisioning": prov}, tmp_path, tmp_path)
    return ReprovisioningPolicy(settings, interval)


def test_dynamic_reprovisions_on_a_refusal_once_per_interval(tmp_path: Path) -> None:
    refused = HubError("IoT Hub answered 401", cloud_status=401)
    policy = _policy("Dynamic", DPS, tmp_path)
    assert policy.moved(refused)
    assert not policy.moved(refused)  # a hub that keeps refusing does not make the device hammer DPS
    assert _policy("Dynamic", DPS, tmp_path, interval=0.0).moved(refused)


@pytest.mark.parametrize("status", [None, 404, 429, 500, 503])
def test_dynamic_ignores_outages_and_missing_modules(status: int | None, tmp_path: Path) -> None:
    error = HubError("hub trouble", cloud_status=status) if status is not None else HttpError("x", status=502)
    assert not _policy("Dynamic", DPS, tmp_path).moved(error)


@pytest.mark.parametrize(("mode", "prov", "moved", "fresh"), [
    ("OnErrorOnly", DPS, False, False), ("AlwaysOnStartup", DPS, False, True), ("Dynamic", DPS, True, False),
    ("Dynamic", MANUAL, False, False), ("AlwaysOnStartup", MANUAL, False, False)])
def test_each_mode_as_the_template_describes_it(mode: str, prov: dict[str, object], moved: bool, fresh: bool,
                                                tmp_path: Path) -> None:
    policy = _policy(mode, prov, tmp_path)
    assert policy.moved(HubError("refused", cloud_status=403)) is moved
    assert policy.fresh_on_startup() is fresh


def test_subject_fields_follow_aziot_certd() -> None:
    fields = subject_fields({"ST": "Antarctica", "L": "AQ", "CN": "x" * 80, "2.5.4.97": "VATAQ-1"})
    assert [name for name, _ in fields] == ["2.5.4.97", "CN", "L", "ST"]  # BTreeMap order
    assert dict(fields)["CN"] == "x" * CN_MAX  # cut as aziot-certd cuts it
    assert subject_name(fields).rfc4514_string() == f"ST=Antarctica,L=AQ,CN={'x' * CN_MAX},2.5.4.97=VATAQ-1"
    with pytest.raises(DnError, match="two-letter country"):
        subject_fields({"C": "A1"})
    with pytest.raises(DnError, match="at most 256"):
        subject_fields({"O": "o" * 257})


def test_subject_field_names_are_the_oids_cryptography_names() -> None:
    """DN_FIELDS holds dotted OIDs (no X.509 code to read a config): each must be the OID cryptography gives that
    attribute, and the name a certificate gets must carry it."""
    from cryptography.x509.oid import NameOID

    by_oid = {v.dotted_string: k for k, v in vars(NameOID).items() if not k.startswith("_")}
    expected = {"CN": "COMMON_NAME", "C": "COUNTRY_NAME", "ST": "STATE_OR_PROVINCE_NAME", "L": "LOCALITY_NAME",
                "O": "ORGANIZATION_NAME", "OU": "ORGANIZATIONAL_UNIT_NAME", "street": "STREET_ADDRESS",
                "postalCode": "POSTAL_CODE", "serialNumber": "SERIAL_NUMBER", "title": "TITLE", "GN": "GIVEN_NAME",
                "SN": "SURNAME", "initials": "INITIALS", "pseudonym": "PSEUDONYM",
                "generationQualifier": "GENERATION_QUALIFIER", "dnQualifier": "DN_QUALIFIER",
                "DC": "DOMAIN_COMPONENT", "UID": "USER_ID", "emailAddress": "EMAIL_ADDRESS",
                "businessCategory": "BUSINESS_CATEGORY", "jurisdictionC": "JURISDICTION_COUNTRY_NAME",
                "jurisdictionST": "JURISDICTION_STATE_OR_PROVINCE_NAME",
                "jurisdictionL": "JURISDICTION_LOCALITY_NAME"}
    for short, attribute in expected.items():
        assert by_oid[DN_FIELDS[short]] == attribute, short
    assert len({DN_FIELDS[k] for k in DN_FIELDS}) == len(expected)  # every long name is one of these
    name = subject_name(subject_fields({"jurisdictionC": "AQ", "CN": "dev"}))
    assert name.get_attributes_for_oid(NameOID.JURISDICTION_COUNTRY_NAME)[0].value == "AQ"
    with pytest.raises(DnError, match="two-letter country"):
        subject_fields({"jurisdictionC": "AQX"})
    with pytest.raises(DnError, match="dotted OID"):
        subject_fields({"3.99": "x"})  # cryptography refuses a first arc above 2
