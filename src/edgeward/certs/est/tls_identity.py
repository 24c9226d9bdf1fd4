"""A TLS client identity whose key stays in the keys service — the plain record, kept apart from the tlslite-ng
transport that uses it, so configuring one does not load a TLS stack a device may never need."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509

from ...keys.api import KeysApi

__all__ = ["KeysIdentity"]


@dataclass(frozen=True, slots=True)
class KeysIdentity:
    """A TLS client identity whose private key stays in the keys service: the certificate chain (leaf first) and
    the key handle (``KeysApi.load_key_pair`` / ``create_key_pair_if_not_exists``) of the leaf's key.

    The handle is a capability: it is kept out of ``repr`` and logs.
    """

    cert_chain: list[x509.Certificate]
    keys: KeysApi = field(repr=False)
    key_handle: str = field(repr=False)
