"""The TPM service (aziot-tpmd's counterpart): EK and SRK publics, DPS auth-key import, HMAC with the auth key.

``TpmService`` (in-process, in :mod:`edgeward.tpm.service`) needs tpm2-pytss; everything exported here does not, so
a caller that only talks to the service over its socket can import this package on any device.
"""

from .api import AuthKeyMissing, InvalidAuthKey, TpmApi, TpmKeys, TpmUnavailable
from .client import TpmClient
from .routes import build_tpm_app
from .settings import HierarchyAuthorization, TpmdSettings, parse_tpmd_settings

__all__ = [
    "AuthKeyMissing",
    "HierarchyAuthorization",
    "InvalidAuthKey",
    "TpmApi",
    "TpmClient",
    "TpmKeys",
    "TpmUnavailable",
    "TpmdSettings",
    "build_tpm_app",
    "parse_tpmd_settings",
]
