"""Builds a running keys service from its settings: backends, master key, handle key, principals.

Every misconfiguration surfaces here as one :class:`BackendUnavailable` naming the setting, before any socket
is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..access.trusted import trusted_service_uids
from ..executor import BlockingExecutor, SerialLane
from ..fsutil import private_dir
from .backends.base import KeyBackend
from .backends.fallback import SymmetricFallback
from .backends.masterkey import FileMasterKey, MasterKeySource
from .backends.preloaded_file import PreloadedFileBackend
from .backends.software import SoftwareBackend
from .errors import BackendUnavailable
from .handles import KeyHandleCodec
from .locations import KeyLocation, KeyLocator
from .principals import PrincipalTable
from .service import KeyService
from .settings import KeysSettings
from .uri import FileUri, Pkcs11Uri, parse_key_uri

if TYPE_CHECKING:
    from collections.abc import Callable

    from .backends.pkcs11 import Pkcs11Backend
    from .backends.tpm import TpmBackend

__all__ = ["build_key_service"]


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(master)


class _Pkcs11Pool:
    """One backend per (library, token, PIN): preloaded keys on the base token share its sessions."""

    def __init__(self) -> None:
        self._backends: dict[tuple[str, str | None, int | None, str | None], Pkcs11Backend] = {}

    def get(self, lib: str, uri: Pkcs11Uri, setting: str) -> Pkcs11Backend:
        # Imported here: python-pkcs11 is loaded only on devices that use a token.
        from .backends.pkcs11 import Pkcs11Backend, Pkcs11Settings  # noqa: PLC0415

        key = (lib, uri.token, uri.slot_id, uri.pin_value)
        if key not in self._backends:
            self._backends[key] = Pkcs11Backend(
                Pkcs11Settings(lib, uri.pin_value, uri.token, uri.slot_id, setting_name=setting)
            )
        return self._backends[key]


def _tpm_parts(settings: KeysSettings, homedir: Path) -> tuple[TpmBackend, MasterKeySource]:
    # Imported here: tpm2-pytss is optional and only needed on devices that use a TPM.
    from .backends.tpm import TpmBackend, TpmSealedMasterKey, TpmSettings  # noqa: PLC0415

    assert settings.tpm_tcti is not None
    tpm = TpmBackend(TpmSettings(tcti=settings.tpm_tcti, blob_dir=homedir / "tpm",
                                 owner_auth=settings.tpm_owner_auth, setting_name="edgeward.keys.tpm_tcti"))
    return tpm, TpmSealedMasterKey(tpm, homedir / "master-key.tpm")


def build_key_service(settings: KeysSettings) -> KeyService:
    homedir = private_dir(settings.homedir)
    tpm: TpmBackend | None = None
    master_source: MasterKeySource = FileMasterKey(homedir / "master-key")
    if settings.backend == "tpm" or settings.master_key == "tpm":
        tpm, sealed = _tpm_parts(settings, homedir)
        if settings.master_key == "tpm":
            master_source = sealed
    master = master_source.load_or_create()
    software = SoftwareBackend(homedir / "software", master)
    pool = _Pkcs11Pool()

    default: KeyBackend
    lanes: dict[Callable[..., object], SerialLane] = {}
    if settings.backend == "pkcs11":
        if settings.pkcs11_lib_path is None or settings.pkcs11_base_slot is None:
            raise BackendUnavailable("aziot_keys.pkcs11_lib_path and pkcs11_base_slot must be set for pkcs11")
        default = SymmetricFallback(
            pool.get(settings.pkcs11_lib_path, settings.pkcs11_base_slot, "aziot_keys.pkcs11_base_slot"), software
        )
    elif settings.backend == "tpm":
        assert tpm is not None
        default = SymmetricFallback(tpm, software)
        # Signatures run on the TPM context's own thread, back to back (see executor.py); key pairs always live in
        # the TPM, so these calls never reach the software store.
        lanes = {default.sign_digest: tpm.lane, default.rsa_private_encrypt: tpm.lane}
    else:
        default = software

    files = PreloadedFileBackend()
    preloaded: dict[str, KeyLocation] = {}
    for key_id, raw in settings.preloaded_keys.items():
        uri = parse_key_uri(raw)
        if isinstance(uri, FileUri):
            preloaded[key_id] = KeyLocation(files, str(uri.path), preloaded=True)
        else:
            lib = uri.module_path or settings.pkcs11_lib_path
            if lib is None:
                raise BackendUnavailable(f"preloaded_keys.{key_id}: no PKCS#11 library (aziot_keys.pkcs11_lib_path)")
            backend = pool.get(lib, uri, f"preloaded_keys.{key_id}")
            preloaded[key_id] = KeyLocation(backend, uri.object or key_id, preloaded=True)

    return KeyService(
        locator=KeyLocator(default, preloaded),
        handles=KeyHandleCodec(_derive(master, b"edgeward key handle validation v1")),
        principals=PrincipalTable(settings.principals, trusted_uids=trusted_service_uids("keyd")),
        executor=BlockingExecutor(settings.max_concurrency, name="edgeward-keys", lanes=lanes),
        default_ttl_seconds=settings.handle_ttl_seconds,
    )
