"""The TPM service (aziot-tpmd's counterpart): EK and SRK publics, DPS auth-key import, HMAC with the auth key.

``TpmService`` (in-process, in :mod:`edgeward.tpm.service`) needs tpm2-pytss; nothing exported here does, so any
device can import this package. Only the API and the settings are exported: every process reads the TPM settings
(``edgeward serve keys`` too), and should not load the client, the routes and their wire models with them; import
those from :mod:`edgeward.tpm.client` and :mod:`edgeward.tpm.routes`.
"""

from .api import AuthKeyMissing, InvalidAuthKey, TpmApi, TpmKeys, TpmUnavailable
from .settings import HierarchyAuthorization, TpmdSettings, parse_tpmd_settings

__all__ = [
    "AuthKeyMissing",
    "HierarchyAuthorization",
    "InvalidAuthKey",
    "TpmApi",
    "TpmKeys",
    "TpmUnavailable",
    "TpmdSettings",
    "parse_tpmd_settings",
]
