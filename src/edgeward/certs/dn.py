"""A certificate's subject as IoT Edge's ``subject = { L = "AQ", ST = "Antarctica", CN = "my-device" }`` gives it.

aziot-certd builds the name with OpenSSL from the table: each field by its OpenSSL short or long name (or a dotted
OID), in the table's sorted key order (a BTreeMap), the CN cut to X.509's 64 characters. Edgeward builds the same
name with the same order, so a certificate issued here carries the subject an IoT Edge device's did. Names OpenSSL
would refuse are refused when the configuration is read, with the list of accepted ones.

A CSR's subject is read here too (:func:`name_values`), from its DER rather than from cryptography's decoding,
because a verifier in C reads an attribute's bytes as they are (``X509_NAME_get_text_by_NID`` copies them): the
bytes of a BMPString whose UTF-16 code units are CJK characters spell ASCII there, and a NUL ends the name.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["CN_MAX", "DN_FIELDS", "DnError", "NameValue", "NameValueError", "common_name_of", "field_name",
           "has_control", "name_values", "subject_fields", "subject_name"]

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
_FIELD_OF = {dotted: name for name, dotted in reversed(DN_FIELDS.items())}  # the short name, listed first, wins
# The ASN.1 string types a directory string is written in, and how their bytes are text (ISO 8859-1 for T61String,
# as cryptography reads it). Anything else as an attribute value (an OCTET STRING, an INTEGER, a structure) is no
# name any aziot client asks for, and each reader would make its own text of it.
_STRING_TYPES = {0x0C: "utf-8", 0x12: "ascii", 0x13: "ascii", 0x14: "latin-1", 0x16: "ascii", 0x1A: "ascii",
                 0x1C: "utf-32-be", 0x1E: "utf-16-be"}


class DnError(ValueError):
    """What is wrong with a subject table, in words an operator can act on."""


class NameValueError(DnError):
    """An attribute of a name that is no directory string: ``field`` (CN, OU, a dotted OID) and why."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"subject {field}: {why}" if field else f"subject: {why}")
        self.field = field
        self.why = why


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
        if has_control(value):
            raise DnError(f"field {name!r}: no control characters")
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


def has_control(text: str) -> bool:
    """A C0 or C1 control character or DEL (Unicode category Cc): NUL ends a C string, a newline splits a log line."""
    return any(c < " " or "\x7f" <= c <= "\x9f" for c in text)


def field_name(dotted: str) -> str:
    """The short name of a field (CN, OU, emailAddress), else its dotted OID: what a refusal names."""
    return _FIELD_OF.get(dotted, dotted)


class NameValue(NamedTuple):
    """One attribute of a name: its field, its text as its string type decodes, and its bytes as written."""

    field: str  # field_name()
    text: str
    raw: bytes


def name_values(der: bytes) -> list[NameValue]:
    """Every attribute of the Name ``der`` (SEQUENCE OF SET OF SEQUENCE { type, value }), in order; NameValueError
    for a value that is not a well-formed directory string. Read on every issuance: kept to plain loops."""
    out: list[NameValue] = []
    tag, at, end = _header(der, 0, len(der))
    _expect(tag == 0x30 and end == len(der), "a name is one SEQUENCE")
    while at < end:
        tag, rdn_at, rdn_end = _header(der, at, end)
        _expect(tag == 0x31, "a name is a SEQUENCE of SETs")
        at = rdn_end
        while rdn_at < rdn_end:
            tag, atv_at, atv_end = _header(der, rdn_at, rdn_end)
            _expect(tag == 0x30, "an attribute is a SEQUENCE")
            rdn_at = atv_end
            tag, oid_at, oid_end = _header(der, atv_at, atv_end)
            _expect(tag == 0x06, "an attribute starts with its type")
            value_tag, value_at, value_end = _header(der, oid_end, atv_end)
            _expect(value_end == atv_end, "an attribute is a type and one value")
            field = _field_of_oid(der[oid_at:oid_end])
            encoding = _STRING_TYPES.get(value_tag)
            raw = der[value_at:value_end]
            if encoding is None:
                raise NameValueError(field, f"not a directory string (ASN.1 tag {value_tag:#04x})")
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError:
                raise NameValueError(field, "not valid as the string type it is written in") from None
            out.append(NameValue(field, text, raw))
    return out


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise NameValueError("", f"malformed ({what})")


def _header(der: bytes, at: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``at``, which must end by ``end``; one-octet tags."""
    _expect(at + 2 <= end and der[at] & 0x1F != 0x1F, "a one-octet tag and a length")
    tag, first = der[at], der[at + 1]
    at += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        _expect(0 < count <= 4 and at + count <= end, "a definite length")
        length = int.from_bytes(der[at:at + count], "big")
        at += count
    _expect(at + length <= end, "an element inside its container")
    return tag, at, at + length


@functools.lru_cache(maxsize=256)  # a handful of attribute types; the bound is for callers inventing OIDs
def _field_of_oid(content: bytes) -> str:
    """The field name of an OBJECT IDENTIFIER's content octets (dotted decimal when it has none)."""
    arcs: list[int] = []
    value = 0
    for octet in content:
        value = value << 7 | octet & 0x7F
        if not octet & 0x80:
            arcs.append(value)
            value = 0
    if not arcs:
        return "?"
    first = min(arcs[0] // 40, 2)
    return field_name(".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:])))
