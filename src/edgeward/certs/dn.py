"""A certificate's subject as IoT Edge's ``subject = { L = "AQ", ST = "Antarctica", CN = "my-device" }`` gives it.

aziot-certd builds the name with OpenSSL from the table: each field by its OpenSSL short or long name (or a dotted
OID), in the table's sorted key order (a BTreeMap), the CN cut to X.509's 64 characters. Edgeward builds the same
name with the same order, so a certificate issued here carries the subject an IoT Edge device's did. Names OpenSSL
would refuse are refused when the configuration is read, with the list of accepted ones.
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

__all__ = ["CN_MAX", "DN_FIELDS", "DnError", "common_name_of", "subject_fields", "subject_name"]

CN_MAX = 64  # RFC 5280's ub-common-name; aziot truncates longer CNs

DN_FIELDS: dict[str, ObjectIdentifier] = {
    "CN": NameOID.COMMON_NAME, "commonName": NameOID.COMMON_NAME,
    "C": NameOID.COUNTRY_NAME, "countryName": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME, "stateOrProvinceName": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME, "localityName": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME, "organizationName": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "organizationalUnitName": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "street": NameOID.STREET_ADDRESS, "streetAddress": NameOID.STREET_ADDRESS,
    "postalCode": NameOID.POSTAL_CODE,
    "serialNumber": NameOID.SERIAL_NUMBER,
    "title": NameOID.TITLE,
    "GN": NameOID.GIVEN_NAME, "givenName": NameOID.GIVEN_NAME,
    "SN": NameOID.SURNAME, "surname": NameOID.SURNAME,
    "initials": NameOID.INITIALS,
    "pseudonym": NameOID.PSEUDONYM,
    "generationQualifier": NameOID.GENERATION_QUALIFIER,
    "dnQualifier": NameOID.DN_QUALIFIER,
    "DC": NameOID.DOMAIN_COMPONENT, "domainComponent": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID, "userId": NameOID.USER_ID,
    "emailAddress": NameOID.EMAIL_ADDRESS,
    "businessCategory": NameOID.BUSINESS_CATEGORY,
    "jurisdictionC": NameOID.JURISDICTION_COUNTRY_NAME,
    "jurisdictionST": NameOID.JURISDICTION_STATE_OR_PROVINCE_NAME,
    "jurisdictionL": NameOID.JURISDICTION_LOCALITY_NAME,
}
_COUNTRIES = {NameOID.COUNTRY_NAME, NameOID.JURISDICTION_COUNTRY_NAME}
_MAX_VALUE = 256


class DnError(ValueError):
    """What is wrong with a subject table, in words an operator can act on."""


def _oid(name: str) -> ObjectIdentifier:
    oid = DN_FIELDS.get(name)
    if oid is not None:
        return oid
    parts = name.split(".")
    if len(parts) >= 2 and all(p.isdigit() for p in parts):
        try:
            return ObjectIdentifier(name)
        except ValueError:
            pass
    raise DnError(f"distinguished name fields OpenSSL knows; {name!r} is not one (known: "
                  f"{', '.join(sorted(DN_FIELDS))}, or a dotted OID)")


def subject_fields(raw: object) -> tuple[tuple[str, str], ...]:
    """The checked (name, value) pairs of a subject table, in the order they go into the certificate."""
    if not isinstance(raw, Mapping) or not raw:
        raise DnError('a non-empty table of distinguished name fields, e.g. { CN = "my-device", O = "Contoso" }')
    out: list[tuple[str, str]] = []
    for name in sorted(raw):  # aziot-certd's BTreeMap order
        value = raw[name]
        if not isinstance(name, str) or not isinstance(value, str) or not value:
            raise DnError(f"field {name!r}: a non-empty string")
        if len(value) > _MAX_VALUE:
            raise DnError(f"field {name!r}: at most {_MAX_VALUE} characters")
        oid = _oid(name)
        if oid in _COUNTRIES and not (len(value) == 2 and value.isascii() and value.isalpha()):
            raise DnError(f"field {name!r}: a two-letter country code (ISO 3166), not {value!r}")
        if oid == NameOID.COMMON_NAME:
            value = value[:CN_MAX]  # as aziot-certd does
        out.append((name, value))
    return tuple(out)


def subject_name(fields: tuple[tuple[str, str], ...]) -> x509.Name:
    """The X.509 name of checked fields (see :func:`subject_fields`)."""
    return x509.Name([x509.NameAttribute(_oid(name), value) for name, value in fields])


def common_name_of(fields: tuple[tuple[str, str], ...]) -> str | None:
    for name, value in fields:
        if _oid(name) == NameOID.COMMON_NAME:
            return value
    return None
