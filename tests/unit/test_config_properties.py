"""Property tests of the config reader: whatever TOML document a user writes, `load_settings` either accepts it or
raises ConfigError (never another exception), and no message or warning shows a secret value."""

from __future__ import annotations

import tempfile
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgeward.config.problems import ConfigError
from edgeward.config.toml_write import dumps
from edgeward.daemon import load_settings

MARK = "Zq9sEcReT"  # a secret value; it may appear only where secrets go
SECRET_B64 = "WnE5c0VjUmVU"  # base64 of MARK

# Names the readers know, at every level, so random documents reach deep into the schema.
NAMES = ["hostname", "parent_hostname", "local_gateway_hostname", "provisioning", "source", "manual", "dps", "none",
         "connection_string", "iothub_hostname", "device_id", "authentication", "method", "sas", "x509",
         "device_id_pk", "value", "uri", "identity_cert", "identity_pk", "global_endpoint", "id_scope",
         "attestation", "registration_id", "symmetric_key", "tpm", "payload", "cert_issuance", "est", "local_ca",
         "auth", "username", "urls", "default", "trusted_certs", "identity_auto_renew", "auto_renew", "threshold",
         "retry", "rotate_key", "cert", "pk", "common_name", "expiry_days", "subject", "url", "edge_ca",
         "auto_generated_edge_ca_expiry_days", "aziot_keys", "pkcs11_lib_path", "pkcs11_base_slot",
         "preloaded_keys", "preloaded_certs", "principal", "uid", "keys", "certs", "name", "idtype", "agent",
         "config", "image", "createOptions", "env", "connect", "listen", "workload_uri", "management_uri",
         "watchdog", "max_retries", "moby_runtime", "network", "edgeward", "runtime", "integrity", "identity",
         "engine", "backend", "tcti", "auth_key_index", "hierarchy_authorization", "localid", "domain_name",
         "endpoints", "aziot_keyd", "trust_bundle_cert", "auto_reprovisioning_mode", "cloud_timeout_sec",
         "bootstrap_identity_cert", "bootstrap_identity_pk", "group_enrollment", "homedir"]
SCALARS = st.one_of(
    st.sampled_from(["manual", "dps", "none", "est", "local_ca", "self_signed", "x509", "sas", "tpm",
                     "symmetric_key", "file:///var/secrets/a.pem", "pkcs11:token=t;object=o", "https://e.example/est",
                     "unix:///run/x.sock", "80%", "2day", "infinite", "Dynamic", "device-id", "", "x" * 70]),
    st.integers(min_value=-(2**40), max_value=2**40), st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(NAMES), inner, max_size=5)), max_leaves=25)

# Secrets, each where the schema keeps one.
SECRETS: list[tuple[tuple[str, ...], Any]] = [
    (("provisioning", "connection_string"), f"HostName=h.example;DeviceId=d;SharedAccessKey={MARK}"),
    (("provisioning", "connection_string"), f"HostName=h.example;DeviceId=d;SharedAccessKey={SECRET_B64}"),
    (("provisioning", "authentication", "device_id_pk"), {"value": MARK}),
    (("provisioning", "attestation", "symmetric_key"), {"value": MARK}),
    (("provisioning", "attestation", "symmetric_key"), {"uri": f"pkcs11:object=k?pin-value={MARK}"}),
    (("cert_issuance", "est", "auth", "password"), MARK),
    (("edge_ca", "password"), MARK),
    (("aziot_keys", "pkcs11_base_slot"), f"pkcs11:token=t?pin-value={MARK}"),
    (("aziot_keys", "pkcs11_base_slot"), f"pkcs11:bad=1?pin-value={MARK}"),
    (("preloaded_keys", "k"), f"pkcs11:object=k?pin-value={MARK}"),
    (("edge_ca",), {"cert": "file:///c.pem", "pk": {"uri": f"pkcs11:object=ca;nope=2?pin-value={MARK}"}}),
    (("edge_ca",), {"method": "est", "url": "https://e.example/est", "username": "u", "password": MARK,
                    "bootstrap_identity_cert": "file:///b.pem", "bootstrap_identity_pk": f"pkcs11:x?pin-value={MARK}"}),
    (("provisioning",), {"source": "manual", "iothub_hostname": "h.example", "device_id": "d", "authentication": {
        "method": "x509", "identity_cert": "file:///c.pem", "identity_pk": f"pkcs11:object=id?pin-value={MARK}"}}),
    (("provisioning", "authentication", "identity_pk"), f"pkcs11:object=id?pin-value={MARK}"),
    (("tpm", "hierarchy_authorization", "owner"), MARK),
    (("agent", "config", "auth", "password"), MARK),
]


def _put(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        if not isinstance(doc.get(key), dict):
            doc[key] = {}
        doc = doc[key]
    doc[path[-1]] = value


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    doc = draw(st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=8))
    for path, value in draw(st.lists(st.sampled_from(SECRETS), max_size=3)):
        _put(doc, path, value)
    return doc


def _load(doc: dict[str, Any]) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        text = dumps(doc)
        assert tomllib.loads(text) == doc
        path.write_text(text)
        try:
            return list(load_settings(path, Path(tmp) / "state", Path(tmp) / "run").warnings)
        except ConfigError as e:
            return [*e.problems, str(e)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_any_document_gives_settings_or_config_error_and_never_shows_secrets(doc: dict[str, Any]) -> None:
    for message in _load(doc):
        assert MARK not in message and SECRET_B64 not in message, message


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=8), VALUES, max_size=6))
@example({"0\n": 1})  # a key ending in a newline once passed for bare ("$" matches before a final newline)
def test_toml_writer_round_trips(doc: dict[str, Any]) -> None:
    assert tomllib.loads(dumps(doc)) == doc
