"""The certificates service as callers see it; implemented in-process and over the socket."""

from __future__ import annotations

from typing import Protocol

__all__ = ["CertsApi"]


class CertsApi(Protocol):
    async def create_cert(self, cert_id: str, csr: bytes, issuer: tuple[str, str] | None = None) -> str:
        """Issue a certificate for ``csr`` (PEM or DER); ``issuer`` is (issuer cert id, issuer key handle)."""
        ...

    async def import_cert(self, cert_id: str, pem: str) -> str: ...

    async def get_cert(self, cert_id: str) -> str:
        """The chain, leaf first; :class:`~edgeward.certs.errors.CertNotFound` when there is none."""
        ...

    async def delete_cert(self, cert_id: str) -> None:
        """Done also when the cert did not exist (as aziot-certd)."""
        ...
