"""How the device proves itself to DPS, one kind per attestation. Apart from the DPS client (dps.py) so the identity
service can name them without loading the client and its cloud transports, which a device provisioned manually (or
not at all) never uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..certs.est.tls_identity import KeysIdentity
from .sas import Signer

if TYPE_CHECKING:  # the TPM's modules load only on a device that has one
    from ..tpm.api import TpmApi

__all__ = ["DpsAuth", "SymmetricKeyAuth", "TpmAuth", "X509Auth"]


@dataclass(frozen=True)
class SymmetricKeyAuth:
    sign: Signer


@dataclass(frozen=True)
class X509Auth:
    identity: KeysIdentity


@dataclass(frozen=True)
class TpmAuth:
    tpm: TpmApi


DpsAuth = SymmetricKeyAuth | X509Auth | TpmAuth
