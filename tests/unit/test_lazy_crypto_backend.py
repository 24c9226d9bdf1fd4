"""Loading the services signs nothing, so it does not load cryptography's OpenSSL backend: making an ECDSA
signature-algorithm object imports it (with its cffi binding table, ~0.3 MB of a small device's memory), and the
certificate checks made those objects at import. A restarted daemon pays for the backend at its first signature."""

from __future__ import annotations

import subprocess
import sys

BACKEND = ("cryptography.hazmat.backends.openssl", "cryptography.hazmat.bindings.openssl")
SERVICES = ("edgeward.daemon", "edgeward.keys.compose", "edgeward.certs.compose", "edgeward.identity.compose",
            "edgeward.runtime.compose", "edgeward.tpm.service", "edgeward.certs.x509sign")


def backend_modules_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(' '.join(m for m in sys.modules if m.startswith({BACKEND!r})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return out.split()


def test_loading_the_services_leaves_the_backend_unloaded() -> None:
    assert backend_modules_after("\n".join(f"import {m}" for m in SERVICES)) == []


def test_the_first_certificate_check_loads_it_and_verifies() -> None:
    """The lazily made object is the real one: a good signature passes, a bad one is refused."""
    code = """
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from edgeward.certs.x509sign import IssuerKeyMismatch, _verify
key = ec.generate_private_key(ec.SECP384R1())
tbs = b"to be signed"
_verify(key.public_key(), key.sign(tbs, ec.ECDSA(hashes.SHA384())), tbs)
try:
    _verify(key.public_key(), key.sign(b"other", ec.ECDSA(hashes.SHA384())), tbs)
    raise SystemExit("a signature over other bytes passed")
except IssuerKeyMismatch:
    pass
"""
    assert backend_modules_after(code) != []
