"""The TPM service (aziot-tpmd's counterpart): EK and SRK publics, DPS auth-key import, HMAC with the auth key.

Nothing is imported here: every process reads the TPM settings (:mod:`edgeward.tpm.settings`, ``edgeward serve
keys`` too) and should not load the API, its quote types, the client or the routes with them, which only a device
with a TPM uses. ``TpmService`` (:mod:`edgeward.tpm.service`) needs tpm2-pytss; the API is in
:mod:`edgeward.tpm.api`, the client in :mod:`edgeward.tpm.client`, the routes in :mod:`edgeward.tpm.routes`.
"""
