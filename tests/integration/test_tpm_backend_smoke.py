"""TpmBackend against a real swtpm: every KeyBackend operation, slot pressure, restarts, sealing, failures."""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("tpm2_pytss")

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from tpm2_pytss import ESAPI, ESYS_TR, TPM2_CAP, TPM2_HC

from edgeward.keys.backends.base import KeyBackend, KeyMissing, UnsupportedByBackend
from edgeward.keys.backends.masterkey import MasterKeySource
from edgeward.keys.backends.rsaraw import prepare_block
from edgeward.keys.backends.software import StoreCorrupted, hash_of
from edgeward.keys.backends.tpm import TpmBackend, TpmSealedMasterKey, TpmSettings
from edgeward.keys.errors import BackendUnavailable, InvalidParameter
from edgeward.keys.model import HashAlg, KeyPairAlgorithm, KeyUsage, RsaPadding, SignScheme
from tests.fixtures.processes import free_port_pair
from tests.fixtures.swtpm import Swtpm, running_swtpm

pytestmark = [
    pytest.mark.swtpm,
    pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm is not installed"),
]

os.environ.setdefault("TSS2_LOG", "all+NONE")  # no NV-read noise for the missing EK certificate


# fixtures ------------------------------------------------------------------------------------------------------
def _settings(tpm: Swtpm, tmp_path: Path, owner_auth: str = "") -> TpmSettings:
    return TpmSettings(tcti=tpm.tcti, blob_dir=tmp_path / "blobs", owner_auth=owner_auth)


@pytest.fixture
def backend(fresh_swtpm: Swtpm, tmp_path: Path) -> Iterator[TpmBackend]:
    b = TpmBackend(_settings(fresh_swtpm, tmp_path))
    try:
        yield b
    finally:
        b.close()


def _transient_handles(tcti: str) -> list[int]:
    with ESAPI(tcti) as ectx:
        _, data = ectx.get_capability(TPM2_CAP.HANDLES, TPM2_HC.TRANSIENT_FIRST, 16)
        return [int(h) for h in data.data.handles]


def _digest(alg: HashAlg, message: bytes = b"edgeward") -> bytes:
    return hashlib.new(alg.value, message).digest()


# tests ---------------------------------------------------------------------------------------------------------
def test_backend_satisfies_the_key_backend_protocol(backend: TpmBackend, tmp_path: Path) -> None:
    assert isinstance(backend, KeyBackend)
    source: MasterKeySource = TpmSealedMasterKey(backend, tmp_path / "mk")  # checked by mypy
    assert "mk" in source.description
    assert backend.key_pair_info("nothing") is None
    assert backend.key_info("nothing") is None


@pytest.mark.parametrize("algorithm", [KeyPairAlgorithm.EC_P256, KeyPairAlgorithm.EC_P384])
def test_ec_key_signs_der_ecdsa_that_verifies(backend: TpmBackend, algorithm: KeyPairAlgorithm) -> None:
    info = backend.create_key_pair("ec", algorithm)
    assert info.algorithm is algorithm
    assert backend.key_pair_info("ec") == info
    public_key = info.public_key
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    for alg in HashAlg:
        digest = _digest(alg)
        signature = backend.sign_digest("ec", digest, SignScheme("ecdsa", alg))
        public_key.verify(signature, digest, ec.ECDSA(utils.Prehashed(hash_of(alg))))
    # any digest length the service accepts (it passes sha256 for odd lengths): ECDSA's own truncation rules
    short = hashlib.sha1(b"edgeward").digest()
    signature = backend.sign_digest("ec", short, SignScheme("ecdsa", HashAlg.SHA256))
    public_key.verify(signature, short, ec.ECDSA(utils.Prehashed(hashes.SHA1())))
    with pytest.raises(UnsupportedByBackend):
        backend.sign_digest("ec", _digest(HashAlg.SHA256), SignScheme("rsa-pss"))


def test_ecdsa_through_the_public_esapi_call_signs_alike(backend: TpmBackend,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The sign hot path calls tpm2-pytss's cffi bindings; without them the public ESAPI call must do the same."""
    from edgeward.keys.backends import tpm

    public_key = backend.create_key_pair("ec", KeyPairAlgorithm.EC_P384).public_key
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    monkeypatch.setattr(tpm, "_lib", None)
    digest = _digest(HashAlg.SHA384)
    signature = backend.sign_digest("ec", digest, SignScheme("ecdsa", HashAlg.SHA384))
    public_key.verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA384())))


def test_rsa_2048_signs_pkcs1v15_and_pss(backend: TpmBackend) -> None:
    info = backend.create_key_pair("rsa", KeyPairAlgorithm.RSA_2048)
    public_key = info.public_key
    assert isinstance(public_key, rsa.RSAPublicKey)
    assert public_key.key_size == 2048
    assert public_key.public_numbers().e == 65537
    for alg in HashAlg:
        digest = _digest(alg)
        prehashed = utils.Prehashed(hash_of(alg))
        signature = backend.sign_digest("rsa", digest, SignScheme("rsa-pkcs1v15", alg))
        public_key.verify(signature, digest, padding.PKCS1v15(), prehashed)
        signature = backend.sign_digest("rsa", digest, SignScheme("rsa-pss", alg))
        pss = padding.PSS(mgf=padding.MGF1(hash_of(alg)), salt_length=padding.PSS.DIGEST_LENGTH)
        public_key.verify(signature, digest, pss, prehashed)
    with pytest.raises(InvalidParameter):
        backend.sign_digest("rsa", b"\x01" * 20, SignScheme("rsa-pss", HashAlg.SHA256))
    with pytest.raises(UnsupportedByBackend):
        backend.sign_digest("rsa", _digest(HashAlg.SHA256), SignScheme("ecdsa"))


def test_rsa_private_encrypt_no_padding_and_pkcs1(backend: TpmBackend) -> None:
    public_key = backend.create_key_pair("rsa", KeyPairAlgorithm.RSA_2048).public_key
    assert isinstance(public_key, rsa.RSAPublicKey)
    n, e = public_key.public_numbers().n, public_key.public_numbers().e
    k = 256
    raw = b"\x00\x17" + os.urandom(k - 2)
    for data, pad in ((raw, RsaPadding.NONE), (b"digest info and digest", RsaPadding.PKCS1)):
        out = backend.rsa_private_encrypt("rsa", data, pad)
        assert len(out) == k
        assert pow(int.from_bytes(out, "big"), e, n) == int.from_bytes(prepare_block(data, k, pad), "big")
    with pytest.raises(InvalidParameter):
        backend.rsa_private_encrypt("rsa", b"\xff" * k, RsaPadding.NONE)  # not below the modulus
    with pytest.raises(InvalidParameter):
        backend.rsa_private_encrypt("rsa", b"\x01" * 10, RsaPadding.NONE)
    backend.create_key_pair("ec", KeyPairAlgorithm.EC_P256)
    with pytest.raises(UnsupportedByBackend):
        backend.rsa_private_encrypt("ec", b"x", RsaPadding.PKCS1)


def test_rsa_4096_is_unsupported_or_works(backend: TpmBackend) -> None:
    # swtpm (libtpms) stops at RSA-3072; a TPM that does 4096 must then really sign with it
    try:
        info = backend.create_key_pair("big", KeyPairAlgorithm.RSA_4096)
    except UnsupportedByBackend as e:
        assert "rsa-4096" in str(e)
        assert backend.key_pair_info("big") is None
        return
    digest = _digest(HashAlg.SHA256)
    signature = backend.sign_digest("big", digest, SignScheme("rsa-pkcs1v15"))
    assert isinstance(info.public_key, rsa.RSAPublicKey)
    info.public_key.verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


def test_imported_hmac_key_matches_python_hmac(backend: TpmBackend) -> None:
    key = os.urandom(32)
    info = backend.import_key("sas", key, KeyUsage.SIGN | KeyUsage.DERIVE)
    assert backend.key_info("sas") == info
    assert info.usage == KeyUsage.SIGN | KeyUsage.DERIVE
    for message in (b"", b"module1:gen:primary", os.urandom(1024), os.urandom(1025), os.urandom(4096 + 7)):
        assert backend.hmac_sha256("sas", message) == hmac.new(key, message, hashlib.sha256).digest()


def test_generated_hmac_key_works(backend: TpmBackend) -> None:
    info = backend.create_key("gen", 32, KeyUsage.DERIVE)
    assert backend.key_info("gen") == info
    first = backend.hmac_sha256("gen", b"data")
    assert len(first) == 32
    assert backend.hmac_sha256("gen", b"data") == first
    assert backend.hmac_sha256("gen", b"other") != first
    backend.create_key("odd", 20, KeyUsage.SIGN)  # not the TPM's own size: host random bytes, imported
    assert len(backend.hmac_sha256("odd", b"data")) == 32


def test_encrypt_usage_and_aead_are_unsupported(backend: TpmBackend) -> None:
    with pytest.raises(UnsupportedByBackend):
        backend.create_key("aes", 32, KeyUsage.ENCRYPT)
    with pytest.raises(UnsupportedByBackend):
        backend.import_key("aes", os.urandom(32), KeyUsage.ENCRYPT | KeyUsage.SIGN)
    with pytest.raises(UnsupportedByBackend):
        backend.import_key("huge", os.urandom(200), KeyUsage.SIGN)  # the software store takes it instead
    assert backend.key_info("aes") is None
    backend.import_key("sas", os.urandom(32), KeyUsage.SIGN)
    with pytest.raises(UnsupportedByBackend):
        backend.aead_encrypt("sas", b"\x00" * 12, b"", b"plain")
    with pytest.raises(UnsupportedByBackend):
        backend.aead_decrypt("sas", b"\x00" * 12, b"", b"\x02cipher")


def test_ten_keys_in_rotation_do_not_exhaust_object_slots(fresh_swtpm: Swtpm, backend: TpmBackend) -> None:
    keys = {}
    for i in range(10):
        if i % 2:
            keys[f"k{i}"] = os.urandom(32)
            backend.import_key(f"k{i}", keys[f"k{i}"], KeyUsage.SIGN)
        else:
            backend.create_key_pair(f"k{i}", KeyPairAlgorithm.EC_P256)
    for _ in range(3):
        for ref in keys:
            assert backend.hmac_sha256(ref, b"m" * 2000) == hmac.new(keys[ref], b"m" * 2000, hashlib.sha256).digest()
        for i in range(0, 10, 2):
            info = backend.key_pair_info(f"k{i}")
            assert info is not None
            digest = _digest(HashAlg.SHA256)
            signature = backend.sign_digest(f"k{i}", digest, SignScheme("ecdsa"))
            assert isinstance(info.public_key, ec.EllipticCurvePublicKey)
            info.public_key.verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    assert len(_transient_handles(fresh_swtpm.tcti)) <= 2
    backend.close()
    assert _transient_handles(fresh_swtpm.tcti) == []


def test_threads_share_the_backend_safely(backend: TpmBackend) -> None:
    refs = [f"t{i}" for i in range(3)]
    publics = {ref: backend.create_key_pair(ref, KeyPairAlgorithm.EC_P256).public_key for ref in refs}
    key = os.urandom(32)
    backend.import_key("mac", key, KeyUsage.SIGN)
    digest = _digest(HashAlg.SHA256)

    def work(i: int) -> None:
        for j in range(30):
            ref = refs[(i + j) % len(refs)]
            signature = backend.sign_digest(ref, digest, SignScheme("ecdsa"))
            public_key = publics[ref]
            assert isinstance(public_key, ec.EllipticCurvePublicKey)
            public_key.verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
            assert backend.hmac_sha256("mac", b"%d" % j) == hmac.new(key, b"%d" % j, hashlib.sha256).digest()

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(work, range(6)))


def test_objects_left_by_a_killed_process_are_flushed_at_start(fresh_swtpm: Swtpm, tmp_path: Path) -> None:
    leaked = ESAPI(fresh_swtpm.tcti)
    for _ in range(3):
        leaked.create_primary(None, "ecc256", ESYS_TR.NULL)
    leaked.close()  # as after kill -9: the objects stay loaded in a TPM without a resource manager
    assert len(_transient_handles(fresh_swtpm.tcti)) == 3
    b = TpmBackend(_settings(fresh_swtpm, tmp_path))
    try:
        b.create_key_pair("after", KeyPairAlgorithm.EC_P256)
        b.sign_digest("after", _digest(HashAlg.SHA256), SignScheme("ecdsa"))
    finally:
        b.close()


def test_keys_and_sealed_master_key_survive_a_swtpm_restart(fresh_swtpm: Swtpm, tmp_path: Path) -> None:
    key = os.urandom(32)
    digest = _digest(HashAlg.SHA256)
    sealed_path = tmp_path / "master-key.tpm"

    def check(b: TpmBackend) -> None:
        assert b.key_pair_info("device-id") == pair
        signature = b.sign_digest("device-id", digest, SignScheme("ecdsa"))
        assert isinstance(pair.public_key, ec.EllipticCurvePublicKey)
        pair.public_key.verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        assert b.hmac_sha256("sas", b"x") == hmac.new(key, b"x", hashlib.sha256).digest()
        assert TpmSealedMasterKey(b, sealed_path).load_or_create() == master

    b = TpmBackend(_settings(fresh_swtpm, tmp_path))
    try:
        pair = b.create_key_pair("device-id", KeyPairAlgorithm.EC_P256)
        b.import_key("sas", key, KeyUsage.SIGN)
        master = TpmSealedMasterKey(b, sealed_path).load_or_create()
        assert len(master) == 32
        assert sealed_path.stat().st_mode & 0o777 == 0o600
        check(b)  # both keys are now cached (loaded) in the TPM

        fresh_swtpm.stop()
        with pytest.raises(BackendUnavailable):
            b.hmac_sha256("sas", b"x")
        fresh_swtpm.start(fresh_swtpm.port)
        check(b)  # the open backend reconnects and reloads from its blobs
    finally:
        b.close()

    fresh_swtpm.restart()
    b = TpmBackend(_settings(fresh_swtpm, tmp_path))
    try:
        check(b)
    finally:
        b.close()
    # from settings alone, as a master-key source that opens and closes its own connection
    assert TpmSealedMasterKey(_settings(fresh_swtpm, tmp_path), sealed_path).load_or_create() == master


def test_sealed_master_key_from_another_tpm_is_refused(tmp_path: Path) -> None:
    sealed_path = tmp_path / "master-key.tpm"
    with running_swtpm(tmp_path / "one") as one:
        TpmSealedMasterKey(_settings(one, tmp_path), sealed_path).load_or_create()
    with running_swtpm(tmp_path / "two") as two:
        with pytest.raises(BackendUnavailable, match="cannot be unsealed"):
            TpmSealedMasterKey(_settings(two, tmp_path), sealed_path).load_or_create()
        assert sealed_path.exists()  # never silently replaced: the software store depends on it


def test_move_and_delete(backend: TpmBackend, tmp_path: Path) -> None:
    pair = backend.create_key_pair("old", KeyPairAlgorithm.EC_P256)
    backend.sign_digest("old", _digest(HashAlg.SHA256), SignScheme("ecdsa"))
    backend.create_key_pair("new", KeyPairAlgorithm.EC_P384)  # replaced by the move
    backend.move_key_pair("old", "new")
    assert backend.key_pair_info("old") is None
    assert backend.key_pair_info("new") == pair
    digest = _digest(HashAlg.SHA256)
    signature = backend.sign_digest("new", digest, SignScheme("ecdsa"))
    assert isinstance(pair.public_key, ec.EllipticCurvePublicKey)
    pair.public_key.verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    with pytest.raises(KeyMissing):
        backend.sign_digest("old", digest, SignScheme("ecdsa"))
    with pytest.raises(KeyMissing):
        backend.move_key_pair("old", "other")
    backend.move_key_pair("new", "new")
    assert backend.key_pair_info("new") == pair

    backend.delete_key_pair("new")
    assert backend.key_pair_info("new") is None
    with pytest.raises(KeyMissing):
        backend.sign_digest("new", digest, SignScheme("ecdsa"))
    backend.import_key("sym", os.urandom(32), KeyUsage.SIGN)
    backend.delete_key("sym")
    assert backend.key_info("sym") is None
    with pytest.raises(KeyMissing):
        backend.hmac_sha256("sym", b"x")
    backend.delete_key("sym")  # deleting twice is fine
    assert [p for p in (tmp_path / "blobs").iterdir() if not p.name.startswith(".")] == []


def test_blob_renamed_to_another_key_id_is_refused(backend: TpmBackend, tmp_path: Path) -> None:
    backend.create_key_pair("a", KeyPairAlgorithm.EC_P256)
    backend.create_key_pair("b", KeyPairAlgorithm.EC_P256)
    blobs = tmp_path / "blobs"
    a_name = hashlib.sha256(b"a").hexdigest() + ".keypair.json"
    b_name = hashlib.sha256(b"b").hexdigest() + ".keypair.json"
    assert (blobs / a_name).stat().st_mode & 0o777 == 0o600
    (blobs / b_name).write_bytes((blobs / a_name).read_bytes())
    fresh = TpmBackend(backend.settings)
    try:
        with pytest.raises(StoreCorrupted, match="another key id"):
            fresh.sign_digest("b", _digest(HashAlg.SHA256), SignScheme("ecdsa"))
    finally:
        fresh.close()


def test_unreachable_tpm_is_backend_unavailable_naming_the_setting(tmp_path: Path) -> None:
    port = free_port_pair()
    settings = TpmSettings(tcti=f"swtpm:host=127.0.0.1,port={port}", blob_dir=tmp_path / "blobs",
                           setting_name="edgeward.keys.tpm_tcti")
    with pytest.raises(BackendUnavailable, match=r"edgeward\.keys\.tpm_tcti") as caught:
        TpmBackend(settings)
    assert settings.tcti in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(BackendUnavailable, match=r"tpm\.tcti"):
        TpmBackend(TpmSettings(tcti="nonsense:xyz", blob_dir=tmp_path / "blobs"))


def test_wrong_owner_auth_is_backend_unavailable(fresh_swtpm: Swtpm, tmp_path: Path) -> None:
    with ESAPI(fresh_swtpm.tcti) as ectx:
        ectx.hierarchy_change_auth(ESYS_TR.OWNER, b"owner-secret")
    with pytest.raises(BackendUnavailable, match="owner auth") as caught:
        TpmBackend(_settings(fresh_swtpm, tmp_path, owner_auth="wrong"))
    assert "owner-secret" not in str(caught.value)
    b = TpmBackend(_settings(fresh_swtpm, tmp_path, owner_auth="owner-secret"))
    b.close()
    assert "owner-secret" not in repr(b.settings)


def test_reprs_hold_no_key_material(backend: TpmBackend) -> None:
    key = os.urandom(32)
    backend.import_key("sas", key, KeyUsage.SIGN)
    backend.hmac_sha256("sas", b"x")
    cached = backend._blobs
    texts = [repr(backend), repr(backend.settings), repr(backend.key_info("sas")), repr(cached)]
    for text in texts:
        assert key.hex() not in text
        assert "private=" not in text
