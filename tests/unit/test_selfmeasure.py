"""The self-measurement walks the package without pathlib's rglob (which stats every bytecode cache file) and must
measure exactly what it did: the same files in the same order, so a digest in an old audit record still means the
same code."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import edgeward
from edgeward.attest.selfmeasure import _MEASURED_SUFFIXES, _source_files, measure_self, measure_tree


def _rglob_order(root: Path) -> list[tuple[str, ...]]:
    """The walk as it was: every file pathlib finds, filtered by suffix, in pathlib's path order."""
    return [p.relative_to(root).parts for p in sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix in _MEASURED_SUFFIXES)]


def test_same_files_in_the_same_order_as_pathlib(tmp_path: Path) -> None:
    for name in ["a.py", "a/b.py", "a-b.py", "a_b/c.toml", "A.py", "z/__pycache__/z.cpython-311.pyc",
                 "z/__pycache__/odd.py", "z/y/x.json", ".py", "notes.txt", "x.tar.py", "d.yaml", "e.yml"]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    (tmp_path / "dangling.py").symlink_to(tmp_path / "missing.py")
    (tmp_path / "link.py").symlink_to(tmp_path / "a.py")
    walked = _source_files(tmp_path)
    # __pycache__ holds bytecode only; a .py placed there by hand is the one file the two walks may disagree on
    assert walked == [p for p in _rglob_order(tmp_path) if "__pycache__" not in p]
    assert ("a.py",) in walked and ("a", "b.py") in walked and ("dangling.py",) not in walked
    assert walked.index(("a", "b.py")) < walked.index(("a-b.py",)) < walked.index(("a.py",))


def test_digest_of_the_installed_package_matches_the_pathlib_walk() -> None:
    root = Path(edgeward.__file__).resolve().parent
    outer = hashlib.sha256()
    files = [p for p in _rglob_order(root) if "__pycache__" not in p]
    for parts in files:
        outer.update(f"{'/'.join(parts)}\0{hashlib.sha256(root.joinpath(*parts).read_bytes()).hexdigest()}\n".encode())
    measured = measure_self(None)
    assert (measured.code, measured.files) == (outer.hexdigest(), len(files))


def test_a_name_that_is_not_utf8_is_measured_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("a")
    before = measure_tree(tmp_path)
    odd = os.fsencode(tmp_path) + b"/\xff.py"
    with open(odd, "wb") as f:  # noqa: PTH123 - a bytes path: pathlib cannot name it
        f.write(b"b")
    after = measure_tree(tmp_path)
    assert after[1] == 2 and after[0] != before[0]
    with open(odd, "wb") as f:  # noqa: PTH123
        f.write(b"c")
    assert measure_tree(tmp_path)[0] != after[0]  # its content is measured too
