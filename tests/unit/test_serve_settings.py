"""`edgeward serve <service>` on the super config (or the embedded defaults) reads only its own document of the
split: for every golden config, each service's settings must be what `edgeward run` gives that service, and a
service that is not configured must be refused with a message, not started on nothing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edgeward.config.problems import ConfigError
from edgeward.daemon import load_settings, load_super_service_settings

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "config"
CASES = [None, *sorted(d.name for d in GOLDEN.iterdir() if (d / "config.toml").is_file())]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c or "embedded-defaults")
def test_each_service_reads_what_run_gives_it(case: str | None, tmp_path: Path) -> None:
    config = GOLDEN / case / "config.toml" if case else None
    state, run = tmp_path / "state", tmp_path / "run"
    whole = load_settings(config, state, run)
    keys = load_super_service_settings("keys", config, state, run)
    assert keys.keys == whole.keys and keys.certs is None and keys.runtime is None
    certs = load_super_service_settings("certs", config, state, run)
    assert certs.certs == whole.certs and certs.identity is None
    identity = load_super_service_settings("identity", config, state, run)
    assert identity.identity == whole.identity and identity.runtime is None
    edged = load_super_service_settings("edged", config, state, run)
    assert edged.runtime is not None and edged.keylime == whole.keylime
    assert replace(edged.runtime, protected_paths=()) == replace(whole.runtime, protected_paths=())
    # every path run protects is protected here too, or lies in the state or run directory (protected whole)
    missing = set(whole.runtime.protected_paths) - set(edged.runtime.protected_paths)
    assert all(p.is_relative_to(state) or p.is_relative_to(run) for p in missing), missing
    for one, name in ((keys, "keyd"), (certs, "certd"), (identity, "identityd")):
        assert dict(one.max_requests) == {k: v for k, v in whole.max_requests.items() if k == name}
    if whole.tpm is not None:
        assert load_super_service_settings("tpm", config, state, run).tpm == whole.tpm


def test_serve_tpm_without_a_tpm_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_super_service_settings("tpm", None, tmp_path / "state", tmp_path / "run")
    assert "a [tpm] table naming the TPM" in str(e.value)
