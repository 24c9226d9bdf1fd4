"""EST (RFC 7030): the client that enrolls and renews certificates with an EST server, and its PKCS#7 handling.

The names below load on first use: most devices have no EST server, and the client, its PKCS#7 code and
cryptography's pkcs7 module are about 0.2 MB of a daemon that never enrolls. ``tls_identity`` (what a TLS identity
held by the keys service is) stays light and is imported directly by those who only need that.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOME = {**dict.fromkeys(["ClientIdentity", "EstClient", "build_ssl_context"], "client"),
         **dict.fromkeys(["EstError", "base64_body", "certs_only_pkcs7", "decode_base64_body", "order_chain",
                          "parse_certificates"], "pkcs7"),
         "KeysIdentity": "tls_identity"}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
