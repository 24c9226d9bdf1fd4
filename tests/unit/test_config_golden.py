"""Golden files for `edgeward config apply`: each case's super config, split into per-service files, must equal the
files under `expected/` byte for byte; each bad config must fail with exactly the messages in
`expected_errors.txt`. Run with UPDATE_GOLDEN=1 to rewrite the expected files (then review the diff)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from edgeward.config.problems import ConfigError, Problems
from edgeward.config.super_config import split_super_config
from edgeward.daemon import load_settings, read_config

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "config"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
CASES = sorted(d.name for d in GOLDEN.iterdir() if (d / "config.toml").is_file())
BAD = sorted(d.name for d in (GOLDEN / "bad").iterdir() if (d / "config.toml").is_file())


def _check(path: Path, actual: str) -> None:
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    assert path.is_file(), f"{path} is missing; run with UPDATE_GOLDEN=1 to create it"
    assert actual == path.read_text(), f"{path} differs; run with UPDATE_GOLDEN=1 and review the diff"


def test_there_are_enough_golden_cases() -> None:
    assert len(CASES) >= 15 and len(BAD) >= 8


@pytest.mark.parametrize("case", CASES)
def test_config_apply_matches_golden_files(case: str, tmp_path: Path) -> None:
    config = GOLDEN / case / "config.toml"
    settings = load_settings(config, tmp_path / "state", tmp_path / "run")  # valid, exactly as `run` sees it
    split = split_super_config(read_config(config), Problems())
    files = split.render(config.name)  # what `edgeward config apply` writes
    expected_dir = GOLDEN / case / "expected"
    if not UPDATE:
        assert set(files) == {p.name for p in expected_dir.glob("*.toml")}
    for name, text in files.items():
        assert tomllib.loads(text) == split.files()[name]  # the writer round-trips
        _check(expected_dir / name, text)
    _check(expected_dir / "warnings.txt", "".join(f"{w}\n" for w in settings.warnings))


@pytest.mark.parametrize("case", CASES)
def test_each_applied_file_is_itself_a_valid_config(case: str, tmp_path: Path) -> None:
    """`edgeward serve <service> -c <file>` reads the file apply wrote for that service."""
    split = split_super_config(read_config(GOLDEN / case / "config.toml"), Problems())
    for name, text in split.render("config.toml").items():
        path = tmp_path / name
        path.write_text(text)
        load_settings(path, tmp_path / "state", tmp_path / "run")


@pytest.mark.parametrize("case", BAD)
def test_bad_config_reports_every_problem_exactly(case: str, tmp_path: Path) -> None:
    config = GOLDEN / "bad" / case / "config.toml"
    with pytest.raises(ConfigError) as raised:
        load_settings(config, tmp_path / "state", tmp_path / "run")
    _check(GOLDEN / "bad" / case / "expected_errors.txt", "".join(f"{p}\n" for p in raised.value.problems))
