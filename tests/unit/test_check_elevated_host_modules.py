"""`edgeward check` on a device running host-process modules: allow_elevated_docker_permissions now decides whether
a module may run as root, so the check reports it (it said "skipped: no container options to allow")."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeward.cli import check as check_module
from edgeward.cli.check import check_elevated, check_engine
from edgeward.config.toml_write import dumps
from edgeward.daemon import EMBEDDED_DEFAULTS, load_settings
from edgeward.runtime.engines.proccgroup import cgroup2_mount


@pytest.mark.parametrize(("allowed", "outcome", "says"), [(False, "ok", "refused"), (True, "warning", "as root")])
async def test_the_check_says_whether_host_modules_may_run_as_root(tmp_path: Path, allowed: bool, outcome: str,
                                                                    says: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(dumps({**EMBEDDED_DEFAULTS, "allow_elevated_docker_permissions": allowed}))
    settings = load_settings(config, tmp_path / "state", tmp_path / "run")
    assert settings.runtime.engine == "process"
    [result] = await check_elevated(settings)
    assert (result.outcome, says in result.detail) == (outcome, True), result


async def test_the_check_says_whether_host_modules_get_cgroups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(None, tmp_path / "state", tmp_path / "run")
    assert settings.runtime.engine == "process"
    by_name = {r.name: r for r in await check_engine(settings)}
    found = cgroup2_mount()
    assert by_name["module cgroups"].outcome == ("ok" if found is not None else "warning")
    monkeypatch.setattr(check_module, "cgroup2_mount", lambda: None)  # a v1-only host
    by_name = {r.name: r for r in await check_engine(settings)}
    assert by_name["module cgroups"].outcome == "warning"
    assert "outlives the module" in by_name["module cgroups"].detail
