"""The README names the test that shows each behaviour (the config key table, the Security model, Compatibility):
every `tests/<file>.py::<name>` it names must exist, so a renamed or deleted test cannot leave a claim unbacked."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def test_every_test_the_readme_names_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    references = set(REFERENCE.findall(readme))
    assert len(references) > 40  # the key table alone names more
    missing = []
    for path, name in sorted(references):
        source = ROOT / path
        if not source.is_file() or not re.search(rf"^(async )?def {name}\(", source.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert missing == []


def test_every_key_table_row_names_a_test_or_a_reason() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Every key of IoT Edge 1.5's config template"):readme.index("## Commands")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) > 60
    for row in rows:
        status, shown_by = [cell.strip() for cell in row.split(" | ")[1:3]]
        assert status.startswith(("honoured", "refused", "no effect")), row
        assert "tests/" in shown_by, row
