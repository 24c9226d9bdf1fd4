"""The TPM service as its callers see it: the Protocol, what it returns and the errors it raises.

Implemented in-process (:class:`~edgeward.tpm.service.TpmService`) and over a socket
(:class:`~edgeward.tpm.client.TpmClient`), so the identity service never knows which composition it runs in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..attest.tpm_quote import Quote
from ..http.errors import BadRequest, NotFound
from ..keys.errors import BackendUnavailable

__all__ = ["AuthKeyMissing", "InvalidAuthKey", "TpmApi", "TpmKeys", "TpmUnavailable"]


@dataclass(frozen=True, slots=True)
class TpmKeys:
    """The public areas of the endorsement key and the storage root key, each a marshalled TPM2B_PUBLIC: what a
    device sends the Device Provisioning Service to register with TPM attestation."""

    endorsement_key: bytes
    storage_root_key: bytes


class TpmUnavailable(BackendUnavailable):
    """The TPM cannot be reached or refuses the configured hierarchy authorization; the message names the setting."""


class InvalidAuthKey(BadRequest):
    """An authentication-key blob that is malformed, or was not made for this TPM's endorsement and storage root
    keys. Nothing changes in the TPM: an earlier imported key stays in place."""


class AuthKeyMissing(NotFound):
    """No authentication key has been imported yet (nothing at the configured persistent handle)."""


class TpmApi(Protocol):
    async def get_tpm_keys(self) -> TpmKeys: ...

    async def import_auth_key(self, key: bytes) -> None:
        """Activate and import the ``authenticationKey`` blob DPS returned, persisting it as the auth key."""
        ...

    async def sign_with_auth_key(self, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` with the imported authentication key."""
        ...

    async def read_audit_counter(self) -> int | None:
        """Edgeward: the audit log's monotonic counter (an NV counter); None until its first increment."""
        ...

    async def increment_audit_counter(self) -> int:
        """Edgeward: add one to the audit counter (defining it the first time); returns the new value."""
        ...

    async def quote(self, nonce: bytes, pcr: int = 23) -> Quote:
        """Edgeward: a TPM quote over Edgeward's measurement PCR with the caller's nonce."""
        ...
