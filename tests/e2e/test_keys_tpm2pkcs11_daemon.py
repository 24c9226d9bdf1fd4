"""The daemon on tpm2-pkcs11 (through tpm2-abrmd), as a device following IoT Edge's TPM guide runs it: key pairs
past what the TPM holds contexts for, each signing, and nothing that ends in a traceback."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from edgeward.supervise import running_daemon
from tests.fixtures.peers import as_uid
from tests.fixtures.tpm2pkcs11 import Tpm2Pkcs11Token

Q = "?api-version=2020-09-01"


def test_the_daemon_on_tpm2_pkcs11_serves_more_key_pairs_than_the_tpm_holds_contexts_for(
    tmp_path: Path, tpm2pkcs11: Tpm2Pkcs11Token
) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[aziot_keys]\npkcs11_lib_path = "{tpm2pkcs11.lib}"\npkcs11_base_slot = "{tpm2pkcs11.uri()}"\n')
    run, log = tmp_path / "r", tmp_path / "daemon.log"
    with running_daemon(["run", "-c", str(cfg), "--state-dir", str(tmp_path / "s"), "--run-dir", str(run)],
                        env=dict(os.environ, **tpm2pkcs11.env), log_path=log):
        sock = run / "keyd.sock"
        handles = []
        for i in range(20):
            status, body = as_uid(0, sock, "POST", "/keypair" + Q,
                                  {"keyId": f"device-{i}", "preferredAlgorithms": "ec-p256"})
            assert status == 200, body
            handles.append(body["keyHandle"])
        for handle in (handles[0], handles[-1]):
            digest = hashlib.sha256(handle.encode()).digest()
            status, body = as_uid(0, sock, "POST", "/sign" + Q, {
                "keyHandle": handle, "algorithm": "ECDSA", "parameters": {"digest": base64.b64encode(digest).decode()}})
            assert status == 200, body
            status, point = as_uid(0, sock, "POST", "/parameters/ec-point" + Q, {"keyHandle": handle})
            assert status == 200, point
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), base64.b64decode(point["value"]))
            public.verify(base64.b64decode(body["signature"]), handle.encode(), ec.ECDSA(hashes.SHA256()))
    text = log.read_text()
    assert "Traceback" not in text and "internal error" not in text, text[-3000:]
