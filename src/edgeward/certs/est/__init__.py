"""EST (RFC 7030): the client that enrolls and renews certificates with an EST server, and its PKCS#7 handling."""

from .client import ClientIdentity, EstClient, build_ssl_context
from .pkcs7 import EstError, base64_body, certs_only_pkcs7, decode_base64_body, order_chain, parse_certificates
from .tls_identity import KeysIdentity

__all__ = [
    "ClientIdentity",
    "EstClient",
    "EstError",
    "KeysIdentity",
    "base64_body",
    "build_ssl_context",
    "certs_only_pkcs7",
    "decode_base64_body",
    "order_chain",
    "parse_certificates",
]
