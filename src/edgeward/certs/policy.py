"""Issuance policy: what a certificate of a given cert id may carry, decided by configuration, never by the CSR.

A cert id has a *kind*:

- ``ca``: BasicConstraints CA:TRUE (critical) with the configured ``path_len`` (default 0: it issues leaves only),
  keyUsage keyCertSign + cRLSign + digitalSignature (critical), no extendedKeyUsage.
- ``server``: a TLS server leaf, extendedKeyUsage serverAuth.
- ``client``: a TLS client leaf, extendedKeyUsage clientAuth.
- ``identity``: a device or module identity, extendedKeyUsage clientAuth; serverAuth as well or instead only when the
  CSR asks for it (aziot local identities with ``attributes = "server"``).

Every leaf gets BasicConstraints CA:FALSE (critical) and keyUsage digitalSignature (critical; plus keyEncipherment
for a server's RSA key, for TLS RSA key exchange). A CSR contributes only its public key, its subject and the subject
alternative names the cert id may carry (``dns_names``: aziot globs, ``*`` any run of characters, a wildcard name
itself only when configured literally; ``ip_addresses``: addresses or networks). A CSR that asks for more than its
cert id allows - CA:TRUE, keyCertSign or cRLSign on a leaf, an extended key usage outside its kind, a name it may
not carry - is refused with a 400 naming the extension, rather than silently trimmed, so a misconfiguration shows.
Other CSR extensions and other key usage bits are not copied; a CA's pathLen is the policy's, whatever the CSR asks.

The subject CN is the configured ``common_name``, else the CSR's; ``common_names`` (globs), when set, bounds it. A
cert id issued by a CA that also issues identities recognised by their CN (the local CA issues ``local-id-*``)
should set it, or its holder can get a certificate with an identity's CN. Whatever the cert id, a subject attribute
must be a directory string without control characters, and a DNS name has neither control characters nor spaces:
a NUL ends the name a C verifier reads (``X509_NAME_get_text_by_NID``, ``strcmp``), which aziot-certd, copying the
CSR's subject as it is, would let through. ``name_under`` finds a name under a domain wherever a verifier could read
one in a value (the local identities' domain is kept for ``local-id-*``: ``CertService``).

Where no ``kind`` (or ``ca = true``) is configured, well-known ids have defaults: the edge CA (``aziot-edged-ca``)
and the local CA are CAs; ``local-id-*`` and EST identities are identities; ``edgeward-device-server`` is a server;
anything else is a client leaf.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from ..keys.principals import glob_to_regex
from .dn import NameValue, NameValueError, has_control, name_values
from .errors import InvalidCsr
from .kinds import (
    DEVICE_SERVER_CERT_ID,
    EDGE_CA_CERT_ID,
    KINDS,
    LOCAL_ID_PREFIX,
    IpNetwork,
    Kind,
    default_kind,
    parse_ip_networks,
)
from .tbs import der_elements, extension_der

__all__ = [
    "DEVICE_SERVER_CERT_ID",
    "EDGE_CA_CERT_ID",
    "KINDS",
    "LOCAL_ID_PREFIX",
    "Grant",
    "IpNetwork",
    "IssuancePolicy",
    "Kind",
    "PolicyRefused",
    "default_kind",
    "name_under",
    "parse_ip_networks",
]

Extension = tuple[x509.ExtensionType, bool]  # (value, critical)

# A subject is bounded before anything reads its names: the local-identity check (name_under) reads every attribute
# several ways (NFKC, case folding, punycode), a few microseconds a character on the event loop, and a CSR just under
# the body limit took ~230 ms (session-13 review). RFC 5280's upper bounds are 64-128 characters for the common
# fields; IoT Hub module ids, which become CNs, reach 128. Far above what any device asks for.
MAX_SUBJECT_ATTRIBUTES = 16
MAX_ATTRIBUTE_CHARS = 256
MAX_SUBJECT_CHARS = 1024

_EKU_OF: dict[Kind, frozenset[x509.ObjectIdentifier]] = {
    "ca": frozenset(),
    "server": frozenset({ExtendedKeyUsageOID.SERVER_AUTH}),
    "client": frozenset({ExtendedKeyUsageOID.CLIENT_AUTH}),
    "identity": frozenset({ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}),
}
_EKU_NAMES = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}


class PolicyRefused(InvalidCsr):
    """The CSR asks for something its cert id's issuance policy does not allow (400, naming the extension)."""


def _eku_name(oid: x509.ObjectIdentifier) -> str:
    return _EKU_NAMES.get(oid, oid._name if oid._name != "Unknown OID" else oid.dotted_string)


def _describe(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    return type(name).__name__


@dataclass(frozen=True)
class Grant:
    """What a request was granted: the names the certificate carries and, for leaves, its extended key usages; the
    CSR's subject attributes, as checked."""

    names: tuple[x509.GeneralName, ...] = ()
    usages: tuple[x509.ObjectIdentifier, ...] = ()
    subject: tuple[NameValue, ...] = ()
    subject_der: bytes | None = None  # the CSR's subject as it carries it (what the certificate copies)


# Reading names as verifiers may: UTS-46 maps these full stops to "." (NFKC maps only some of them).
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_NOT_HOST_ASCII = re.compile(r"[^a-z0-9.-]+")


def name_under(text: str, domain: str) -> str | None:
    """The name under ``domain`` (or the domain itself) that a verifier could read in ``text``, if any. Characters
    that are no host name's (NUL and other controls, blanks, "@", "/") separate names, as a C string ends at a
    NUL and a trimmed or URL-parsed value ends at the blank or the slash; the text is read after NFKC and case
    folding with UTS-46's full stops, once with non-ASCII characters kept, once with them as separators and once
    with them dropped (UTS-46 drops the soft hyphen, a lax reader any non-ASCII), and punycode labels decoded."""
    wanted = _canonical_domain(domain)
    lowered = text.lower()
    if text.isascii() and wanted.isascii() and wanted not in lowered and "xn--" not in lowered:
        return None  # the common case, without the Unicode work
    for piece in _pieces(text):
        decoded = _decode_labels(piece)
        names: list[str] = [piece, *_pieces(decoded)] if decoded is not None else [piece]
        for name in names:
            bare = name.strip(".")
            if bare == wanted or bare.endswith("." + wanted):
                return name
    return None


@functools.lru_cache(maxsize=8)  # the configured domain: one
def _canonical_domain(domain: str) -> str:
    return _fold(_decode_labels(domain) or domain).strip(".")


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold()).translate(_DOTS)


def _pieces(text: str) -> Iterator[str]:
    """The runs of host name characters in each reading of ``text`` (see ``name_under``)."""
    if text.isascii():
        yield from _NOT_HOST_ASCII.sub(" ", text.lower()).split()
        return
    folded = _fold(text)
    kept = "".join(c if c.isalnum() or c in ".-" or unicodedata.category(c)[0] == "M"
                   else "" if unicodedata.category(c) == "Cf" else " " for c in folded)
    yield from kept.split()
    for reading in (folded, text.lower()):  # lax readers: with or without the mapping, non-ASCII ends or vanishes
        yield from _NOT_HOST_ASCII.sub(" ", "".join(c if c.isascii() else " " for c in reading)).split()
        yield from _NOT_HOST_ASCII.sub(" ", "".join(c for c in reading if c.isascii())).split()


def _decode_labels(name: str) -> str | None:
    """``name`` with its punycode (xn--) labels decoded, however lax; None when it has none."""
    if "xn--" not in name:
        return None
    return ".".join(_decode_label(label) for label in name.split("."))


def _decode_label(label: str) -> str:
    if label.startswith("xn--"):
        try:
            return str(label[4:].encode("ascii").decode("punycode"))
        except (UnicodeError, ValueError):
            pass
    return label


@dataclass(frozen=True)
class IssuancePolicy:
    cert_id: str
    kind: Kind
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[IpNetwork, ...] = ()
    path_len: int | None = 0
    common_names: tuple[str, ...] = ()  # globs the subject CN must match; empty: any

    @property
    def is_ca(self) -> bool:
        return self.kind == "ca"

    def _refuse(self, what: str, why: str) -> PolicyRefused:
        return PolicyRefused(f"{what} is not allowed for cert id {self.cert_id}: {why}")

    # what a name may be --------------------------------------------------------------------------------------
    def permits(self, name: x509.GeneralName) -> bool:
        if isinstance(name, x509.DNSName):
            wanted = name.value.lower().rstrip(".")
            if "*" in wanted:  # a wildcard certificate only where the operator wrote that very wildcard
                return any(wanted == p.lower().rstrip(".") for p in self.dns_names)
            return any(glob_to_regex(p.lower().rstrip(".")).fullmatch(wanted) for p in self.dns_names)
        if isinstance(name, x509.IPAddress) and isinstance(name.value, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return any(name.value in net for net in self.ip_addresses)
        return False

    def _why_not(self, name: x509.GeneralName) -> str:
        if not isinstance(name, x509.DNSName | x509.IPAddress):
            return "only DNS names and IP addresses can be configured (dns_names, ip_addresses)"
        if isinstance(name, x509.DNSName):
            allowed = ", ".join(self.dns_names) or "none"
            return f"its dns_names allow {allowed}"
        allowed = ", ".join(str(n) for n in self.ip_addresses) or "none"
        return f"its ip_addresses allow {allowed}"

    # checking a request --------------------------------------------------------------------------------------
    def grant(self, csr: x509.CertificateSigningRequest, common_name: str | None = None) -> Grant:
        """Check every security-relevant extension of ``csr`` against the policy, and the CN the certificate will
        carry (``common_name``, the configured override, else the CSR's) against ``common_names``; raise
        :class:`PolicyRefused` (400) naming the first one that asks for more than the cert id may carry."""
        names: list[x509.GeneralName] = []
        requested_usages: list[x509.ObjectIdentifier] = []
        subject_der = der_elements(csr.tbs_certrequest_bytes)[1]
        subject = self._check_subject(subject_der, common_name)
        for ext in csr.extensions:
            value = ext.value
            if isinstance(value, x509.BasicConstraints):
                if value.ca and not self.is_ca:
                    raise self._refuse("basicConstraints CA:TRUE", "it is not configured as a CA")
                if value.path_length is not None and not self.is_ca:
                    raise self._refuse("basicConstraints pathLen", "it is not configured as a CA")
            elif isinstance(value, x509.KeyUsage):
                if not self.is_ca:
                    for bit, label in (("key_cert_sign", "keyCertSign"), ("crl_sign", "cRLSign")):
                        if getattr(value, bit):
                            raise self._refuse(f"keyUsage {label}", "it is not configured as a CA")
            elif isinstance(value, x509.ExtendedKeyUsage):
                if not self.is_ca:  # a CA carries no EKU; asking for a narrower CA is harmless, so it is ignored
                    for oid in value:
                        if oid not in _EKU_OF[self.kind]:
                            allowed = ", ".join(sorted(_eku_name(o) for o in _EKU_OF[self.kind]))
                            raise self._refuse(f"extendedKeyUsage {_eku_name(oid)}",
                                               f"its kind is {self.kind} ({allowed})")
                        requested_usages.append(oid)
            elif isinstance(value, x509.SubjectAlternativeName):
                for name in value:
                    if isinstance(name, x509.DNSName) and (has_control(name.value) or " " in name.value):
                        raise self._refuse(f"subjectAltName DNS:{name.value!r}",
                                           "a host name has no control or space characters")
                    if not self.permits(name):
                        raise self._refuse(f"subjectAltName {_describe(name)}", self._why_not(name))
                    names.append(name)
            elif ext.oid == ExtensionOID.NAME_CONSTRAINTS and not self.is_ca:
                raise self._refuse("nameConstraints", "it is not configured as a CA")
        if self.common_names:
            self._check_common_name(subject, common_name)
        return Grant(tuple(dict.fromkeys(names)), self._usages(requested_usages), subject, subject_der)

    def _check_subject(self, subject_der: bytes, common_name: str | None) -> tuple[NameValue, ...]:
        """The CSR's subject attributes, read from its DER (what the certificate copies and a C verifier reads):
        each a directory string without control characters; the configured CN override likewise."""
        try:
            values = tuple(name_values(subject_der))
        except NameValueError as e:
            raise self._refuse(f"subject {e.field}".rstrip(), e.why) from None
        if len(values) > MAX_SUBJECT_ATTRIBUTES:
            raise self._refuse(f"a subject of {len(values)} attributes", f"at most {MAX_SUBJECT_ATTRIBUTES}")
        for value in values:
            if len(value.text) > MAX_ATTRIBUTE_CHARS or len(value.raw) > 4 * MAX_ATTRIBUTE_CHARS:
                raise self._refuse(f"subject {value.field} of {len(value.text)} characters",
                                   f"at most {MAX_ATTRIBUTE_CHARS}")
        total = sum(len(value.text) for value in values)
        if total > MAX_SUBJECT_CHARS:
            raise self._refuse(f"a subject of {total} characters", f"at most {MAX_SUBJECT_CHARS} in all")
        for value in values:
            if has_control(value.text):
                raise self._refuse(f"subject {value.field} with a control character",
                                   "names are text (a NUL ends the name a C verifier reads)")
        if common_name is not None and has_control(common_name):
            raise self._refuse("common_name with a control character", "names are text")
        return values

    def _check_common_name(self, subject: tuple[NameValue, ...], override: str | None) -> None:
        values = [override] if override is not None else [v.text for v in subject if v.field == "CN"]
        if not values:
            raise self._refuse("a subject without CN", f"its common_names allow {', '.join(self.common_names)}")
        for value in values:
            if not any(glob_to_regex(p.lower()).fullmatch(value.lower()) for p in self.common_names):
                raise self._refuse(f"subject CN={value}", f"its common_names allow {', '.join(self.common_names)}")

    def grant_for(self, names: Iterable[x509.GeneralName]) -> Grant:
        """The grant of an in-process issuer that decided the names itself (the workload API's certs, whose names
        the runtime checks against what the module may hold): the kind's default usages."""
        return Grant(tuple(dict.fromkeys(names)), self._usages([]))

    def _usages(self, requested: list[x509.ObjectIdentifier]) -> tuple[x509.ObjectIdentifier, ...]:
        if self.kind == "ca":
            return ()
        if self.kind == "identity" and requested:
            return tuple(dict.fromkeys(requested))
        if self.kind == "server":
            return (ExtendedKeyUsageOID.SERVER_AUTH,)
        return (ExtendedKeyUsageOID.CLIENT_AUTH,)

    def check_issuer(self, issuer: x509.Certificate, issuer_id: str) -> None:
        """A certificate is only issued by a CA that may issue it: CA:TRUE, keyCertSign, and room in its pathLen
        for a CA below it."""
        try:
            bc = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise PolicyRefused(f"issuer cert {issuer_id!r} is not a CA certificate (basicConstraints CA:TRUE)")
        try:
            ku = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
            if not ku.key_cert_sign:
                raise PolicyRefused(f"issuer cert {issuer_id!r} may not sign certificates (keyUsage keyCertSign)")
        except x509.ExtensionNotFound:
            pass
        if self.is_ca and bc.path_length is not None and (
            bc.path_length == 0 or (self.path_len is not None and self.path_len >= bc.path_length)
        ):
            raise PolicyRefused(f"cert id {self.cert_id} is a CA but issuer cert {issuer_id!r} has pathLen "
                                f"{bc.path_length}, which leaves no room for it")

    # building the certificate --------------------------------------------------------------------------------
    def extensions(self, public_key: CertificatePublicKeyTypes | None, grant: Grant) -> list[Extension]:
        """The certificate's extensions other than SKID/AKID: fixed by the kind, names from the grant."""
        out = _fixed_extensions(self.is_ca, self.path_len, self._key_encipherment(public_key), grant.usages)
        if grant.names:
            out.append((x509.SubjectAlternativeName(list(grant.names)), False))
        return out

    def extensions_der(self, public_key: CertificatePublicKeyTypes | None, grant: Grant) -> list[bytes]:
        """``extensions`` as the certificate carries them (DER). Those the kind fixes come out the same for every
        certificate of a cert id, so they are encoded once; only the names are the request's."""
        out = list(_fixed_extensions_der(self.is_ca, self.path_len, self._key_encipherment(public_key),
                                         grant.usages))
        if grant.names:
            out.append(extension_der(x509.SubjectAlternativeName(list(grant.names)), False))
        return out

    def _key_encipherment(self, public_key: CertificatePublicKeyTypes | None) -> bool:
        """A server's RSA key also encrypts (TLS RSA key exchange)."""
        return self.kind == "server" and isinstance(public_key, rsa.RSAPublicKey)

    def renewal_request(self, old: x509.Certificate | None) -> list[Extension]:
        """What a renewal CSR asks for (an EST server sees it): the CA extensions of a CA, else the old cert's
        names and usages that the policy still allows, so a narrowed policy does not make renewal fail forever."""
        if self.is_ca:
            return self.extensions(None, Grant())[:2]
        if old is None:
            return []
        out: list[Extension] = []
        try:
            names = [n for n in old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                     if self.permits(n)]
            if names:
                out.append((x509.SubjectAlternativeName(names), False))
        except x509.ExtensionNotFound:
            pass
        try:
            usages = [u for u in old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
                      if u in _EKU_OF[self.kind]]
            if usages:
                out.append((x509.ExtendedKeyUsage(usages), False))
        except x509.ExtensionNotFound:
            pass
        return out

    def check_issued(self, leaf: x509.Certificate, where: str) -> None:
        """An external issuer's answer (EST) must not make a CA out of a cert id that is not one."""
        if self.is_ca:
            return
        try:
            bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            return
        if bc.ca:
            raise ValueError(f"{where} returned a CA certificate for cert id {self.cert_id}, "
                             f"which is not configured as a CA")


def _fixed_extensions(is_ca: bool, path_len: int | None, key_encipherment: bool,
                      usages: tuple[x509.ObjectIdentifier, ...]) -> list[Extension]:
    """BasicConstraints and keyUsage (critical), and a leaf's extendedKeyUsage: what the kind decides."""
    if is_ca:
        return [
            (x509.BasicConstraints(ca=True, path_length=path_len), True),
            (x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                           data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                           encipher_only=False, decipher_only=False), True),
        ]
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=key_encipherment,
                       data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                       encipher_only=False, decipher_only=False), True),
        (x509.ExtendedKeyUsage(list(usages)), False),
    ]


@functools.lru_cache(maxsize=64)  # a handful of kinds, path lengths and usage sets: configuration, not requests
def _fixed_extensions_der(is_ca: bool, path_len: int | None, key_encipherment: bool,
                          usages: tuple[x509.ObjectIdentifier, ...]) -> tuple[bytes, ...]:
    return tuple(extension_der(value, critical)
                 for value, critical in _fixed_extensions(is_ca, path_len, key_encipherment, usages))
