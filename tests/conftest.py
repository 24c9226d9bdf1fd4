"""Session-wide fixtures: real SoftHSM2 and swtpm, started once and stopped by pid; at the end, a check that
nothing the session started still runs (tests/fixtures/leftovers.py)."""

from tests.fixtures.dockerd import dockerd
from tests.fixtures.engines import container_engine
from tests.fixtures.est import est_server
from tests.fixtures.keylime import keylime_services
from tests.fixtures.keys import keys_env, software_keys
from tests.fixtures.leftovers import pytest_sessionfinish, pytest_sessionstart
from tests.fixtures.peers import public_dir
from tests.fixtures.podman import podman_service
from tests.fixtures.runtime import mgmt
from tests.fixtures.softhsm import softhsm
from tests.fixtures.swtpm import fresh_swtpm, swtpm
from tests.fixtures.tpm2pkcs11 import tpm2pkcs11

__all__ = ["container_engine", "dockerd", "est_server", "fresh_swtpm", "keylime_services", "keys_env", "mgmt", "podman_service",
           "public_dir", "pytest_sessionfinish", "pytest_sessionstart", "softhsm", "software_keys", "swtpm",
           "tpm2pkcs11"]
