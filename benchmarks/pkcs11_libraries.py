"""PyKCS11 vs python-pkcs11 on the same SoftHSM2 token: ECDSA P-256 signs/s, and how much a pure-Python thread
still progresses while another thread signs (1.0 = the library releases the GIL during C calls)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .keys_sign import rate_of

DIGEST = hashlib.sha256(b"x").digest()


def pykcs11_ops(lib: str, label: str, pin: str) -> tuple[Callable[[], Any], Callable[[], Any]]:
    import PyKCS11

    p11 = PyKCS11.PyKCS11Lib()
    p11.load(lib)
    slot = next(s for s in p11.getSlotList(tokenPresent=True) if p11.getTokenInfo(s).label.strip() == label)
    s = p11.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
    try:
        s.login(pin)
    except PyKCS11.PyKCS11Error:
        pass  # already logged in by the other library in this process
    ec_params = bytes.fromhex("06082a8648ce3d030107")
    _, ec_priv = s.generateKeyPair(
        [(PyKCS11.CKA_CLASS, PyKCS11.CKO_PUBLIC_KEY), (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_EC),
         (PyKCS11.CKA_TOKEN, False), (PyKCS11.CKA_EC_PARAMS, ec_params)],
        [(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_EC),
         (PyKCS11.CKA_TOKEN, False), (PyKCS11.CKA_SIGN, True), (PyKCS11.CKA_SENSITIVE, True)],
        mecha=PyKCS11.MechanismECGENERATEKEYPAIR)
    _, rsa_priv = s.generateKeyPair(
        [(PyKCS11.CKA_CLASS, PyKCS11.CKO_PUBLIC_KEY), (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_RSA),
         (PyKCS11.CKA_TOKEN, False), (PyKCS11.CKA_MODULUS_BITS, 4096), (PyKCS11.CKA_PUBLIC_EXPONENT, (1, 0, 1))],
        [(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_RSA),
         (PyKCS11.CKA_TOKEN, False), (PyKCS11.CKA_SIGN, True)],
        mecha=PyKCS11.MechanismRSAGENERATEKEYPAIR)
    ecdsa, rsa_pkcs = PyKCS11.Mechanism(PyKCS11.CKM_ECDSA), PyKCS11.Mechanism(PyKCS11.CKM_RSA_PKCS)
    return (lambda: s.sign(ec_priv, DIGEST, ecdsa)), (lambda: s.sign(rsa_priv, DIGEST, rsa_pkcs))


def python_pkcs11_ops(lib: str, label: str, pin: str) -> tuple[Callable[[], Any], Callable[[], Any]]:
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism
    from pkcs11.exceptions import UserAlreadyLoggedIn
    from pkcs11.util.ec import encode_named_curve_parameters

    token = pkcs11.lib(lib).get_token(token_label=label)
    try:
        s = token.open(user_pin=pin, rw=True)
    except UserAlreadyLoggedIn:
        s = token.open(rw=True)
    params = s.create_domain_parameters(KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                                        local=True)
    _, ec_priv = params.generate_keypair(store=False)
    _, rsa_priv = s.generate_keypair(KeyType.RSA, 4096, store=False)
    return (lambda: ec_priv.sign(DIGEST, mechanism=Mechanism.ECDSA)), \
        (lambda: rsa_priv.sign(DIGEST, mechanism=Mechanism.RSA_PKCS))


def gil_progress(op: Callable[[], Any], seconds: float = 1.0) -> float:
    def busy() -> int:
        n, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            n += 1
        return n

    alone = busy()
    stop = threading.Event()

    def signer() -> None:
        while not stop.is_set():
            op()

    t = threading.Thread(target=signer)
    t.start()
    with_signer = busy()
    stop.set()
    t.join()
    return with_signer / alone


def run(lib: str, label: str, pin: str, seconds: float) -> list[dict[str, Any]]:
    rows = []
    for name, factory in (("python-pkcs11", python_pkcs11_ops), ("PyKCS11", pykcs11_ops)):
        ec_sign, rsa_sign = factory(lib, label, pin)
        rows.append({"library": name, "ecdsa_p256_per_s": rate_of(ec_sign, seconds),
                     "loop_progress_during_rsa4096": gil_progress(rsa_sign, seconds)})
    return rows


def run_isolated(lib: str, label: str, pin: str, seconds: float) -> list[dict[str, Any]]:
    """In a child process: both libraries initialize and finalize the same module, which one process cannot undo."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.pkcs11_libraries", lib, label, pin, str(seconds)],
                         capture_output=True, text=True, check=True)
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))))
