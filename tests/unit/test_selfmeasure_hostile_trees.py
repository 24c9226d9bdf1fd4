"""Trees a hostile package directory could hold, walked the old way (pathlib rglob) and the new way (os.walk): both
must agree, including when both fail (from a review of the os.walk self-measurement)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeward.attest.selfmeasure import _MEASURED_SUFFIXES, _source_files


def _old(root: Path) -> list[tuple[str, ...]]:
    return [p.relative_to(root).parts for p in sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix in _MEASURED_SUFFIXES)]


def _w(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(path.name)


def _deep(root: Path) -> None:
    here = Path.cwd()
    os.chdir(root)
    try:
        for _ in range(1100):
            os.mkdir("a")  # noqa: PTH102 - relative to the cwd: the full path passes PATH_MAX
            os.chdir("a")
        Path("m.py").write_text("x")
    finally:
        os.chdir(here)


def _undeep(root: Path) -> None:
    """Removes the chain bottom-up without recursion (pytest's own clean-up, shutil.rmtree, recurses per level)."""
    here = Path.cwd()
    os.chdir(root)
    try:
        depth = 0
        while Path("a").is_dir():
            os.chdir("a")
            depth += 1
        Path("m.py").unlink(missing_ok=True)
        for _ in range(depth):
            os.chdir("..")
            os.rmdir("a")  # noqa: PTH106 - relative to the cwd, as it was made
    finally:
        os.chdir(here)


CASES: dict[str, Callable[[Path], object]] = {
    "symlinked-dir": lambda r: (_w(r / "real/m.py"), (r / "link").symlink_to(r / "real")),
    "symlink-loop": lambda r: (_w(r / "a/m.py"), (r / "a/loop").symlink_to(r / "a")),
    "dir-named-py": lambda r: _w(r / "d.py/in.py"),
    "fifo-py": lambda r: (_w(r / "a.py"), os.mkfifo(r / "f.py")),
    "pycache-symlink": lambda r: (_w(r / "real/m.py"), (r / "__pycache__").symlink_to(r / "real")),
    "non-utf8-name": lambda r: (_w(r / "a.py"), os.close(os.open(os.fsencode(r) + b"/\xff.py", os.O_CREAT | os.O_WRONLY))),
    "odd-names": lambda r: [_w(r / n) for n in ["a/b.py", "a b.py", "a\tb.py", "a.py", "A/b.py", "a-/x.py", "é.py",
                                                "e\u0301.py", "x\n.py"]],
    "deep-1100": _deep,
}


@pytest.mark.parametrize("case", list(CASES))
def test_new_walk_agrees_with_the_old_one(case: str, tmp_path: Path) -> None:
    try:
        CASES[case](tmp_path)
        outcomes = []
        for walk in (_old, _source_files):
            try:
                outcomes.append(walk(tmp_path))
            except RecursionError as e:  # both walks recurse per directory level on Python 3.11
                outcomes.append(type(e).__name__)
        assert outcomes[0] == outcomes[1]
    finally:
        if case == "deep-1100":
            _undeep(tmp_path)
