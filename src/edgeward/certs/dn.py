"""A certificate's subject as IoT Edge's ``subject = { L = "AQ", ST = "Antarctica", CN = "my-device" }`` gives it.

aziot-certd builds the name with OpenSSL from the table: each field by its OpenSSL short or long name (or a dotted
OID), in the table's sorted key order (a BTreeMap), the CN cut to X.509's 64 characters. Edgeward builds the same
name with the same order, so a certificate issued here carries the subject an IoT Edge device's did. Names OpenSSL
would refuse are refused when the configuration is read, with the list of accepted ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["CN_MAX", "DN_FIELDS", "DnError", "common_name_of", "subject_fields", "subject_name"]

CN_MAX = 64  # RFC 5280's ub-common-name; aziot truncates longer CNs

# By dotted OID rather than cryptography's NameOID: reading a config (every service's, `serve keys` included) then
# needs no X.509 code, about 1 MB of a process that never builds a name. subject_name() turns them into OIDs.
_CN, _C, _JURISDICTION_C = "2.5.4.3", "2.5.4.6", "1.3.6.1.4.1.311.60.2.1.3"
DN_FIELDS: dict[str, str] = {
    "CN": _CN, "commonName": _CN,
    "C": _C, "countryName": _C,
    "ST": "2.5.4.8", "stateOrProvinceName": "2.5.4.8",
    "L": "2.5.4.7", "localityName": "2.5.4.7",
    "O": "2.5.4.10", "organizationName": "2.5.4.10",
    "OU": "2.5.4.11", "organizationalUnitName": "2.5.4.11",
    "street": "2.5.4.9", "streetAddress": "2.5.4.9",
    "postalCode": "2.5.4.17",
    "serialNumber": "2.5.4.5",
    "title": "2.5.4.12",
    "GN": "2.5.4.42", "givenName": "2.5.4.42",
    "SN": "2.5.4.4", "surname": "2.5.4.4",
    "initials": "2.5.4.43",
    "pseudonym": "2.5.4.65",
    "generationQualifier": "2.5.4.44",
    "dnQualifier": "2.5.4.46",
    "DC": "0.9.2342.19200300.100.1.25", "domainComponent": "0.9.2342.19200300.100.1.25",
    "UID": "0.9.2342.19200300.100.1.1", "userId": "0.9.2342.19200300.100.1.1",
    "emailAddress": "1.2.840.113549.1.9.1",
    "businessCategory": "2.5.4.15",
    "jurisdictionC": _JURISDICTION_C,
    "jurisdictionST": "1.3.6.1.4.1.311.60.2.1.2",
    "jurisdictionL": "1.3.6.1.4.1.311.60.2.1.1",
}
_COUNTRIES = {_C, _JURISDICTION_C}
_MAX_VALUE = 256


class DnError(ValueError):
    """What is wrong with a subject table, in words an operator can act on."""


def _oid(name: str) -> str:
    """The dotted OID of a field name; a dotted name is checked as cryptography (which builds the name) checks it."""
    oid = DN_FIELDS.get(name)
    if oid is not None:
        return oid
    parts = name.split(".")
    if len(parts) >= 2 and all(p.isdigit() for p in parts):
        from cryptography.x509.oid import ObjectIdentifier  # noqa: PLC0415  (a rare config: see DN_FIELDS)

        try:
            return ObjectIdentifier(name).dotted_string
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
        if oid == _CN:
            value = value[:CN_MAX]  # as aziot-certd does
        out.append((name, value))
    return tuple(out)


def subject_name(fields: tuple[tuple[str, str], ...]) -> x509.Name:
    """The X.509 name of checked fields (see :func:`subject_fields`)."""
    from cryptography import x509  # noqa: PLC0415  (see DN_FIELDS)

    return x509.Name([x509.NameAttribute(x509.ObjectIdentifier(_oid(name)), value) for name, value in fields])


def common_name_of(fields: tuple[tuple[str, str], ...]) -> str | None:
    for name, value in fields:
        if _oid(name) == _CN:
            return value
    return None
