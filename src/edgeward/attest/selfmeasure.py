"""Edgeward measures itself at start: the code it runs from and the config it was given.

The digest goes into the audit log (and, with a TPM, into a PCR), so a later reader can tell which code and
which configuration were in charge when each record was written.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import edgeward

__all__ = ["SelfMeasurement", "measure_self", "measure_tree"]

_MEASURED_SUFFIXES = (".py", ".yaml", ".json", ".toml")


@dataclass(frozen=True)
class SelfMeasurement:
    code: str  # sha256 over (relative path, file sha256) of every source file of the package, in path order
    config: str  # sha256 of the config file's bytes ("" when running on embedded defaults)
    files: int

    @property
    def combined(self) -> bytes:
        return hashlib.sha256(f"edgeward-code:{self.code}\nedgeward-config:{self.config}\n".encode()).digest()


def _source_files(root: Path) -> list[tuple[str, ...]]:
    """The measured files under ``root`` as path parts, in the order pathlib sorts their paths. Walked with scandir,
    skipping bytecode caches (nothing measured lives there): a pathlib rglob stats every file of the tree, caches
    included, which was most of the daemon's start-up time spent here."""
    found: list[tuple[str, ...]] = []
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        here = Path(top)
        prefix = here.relative_to(root).parts
        found += [(*prefix, name) for name in files
                  if Path(name).suffix in _MEASURED_SUFFIXES and (here / name).is_file()]
    return sorted(found)


def measure_tree(root: Path) -> tuple[str, int]:
    """The code digest of the tree under ``root`` and how many files it covers. Names are hashed as the file
    system holds them (os.fsencode: UTF-8 names as UTF-8), so a name that is not UTF-8 is measured, not a crash."""
    outer = hashlib.sha256()
    files = _source_files(root)
    for parts in files:
        digest = hashlib.sha256(root.joinpath(*parts).read_bytes()).hexdigest()
        outer.update(b"/".join(os.fsencode(part) for part in parts) + f"\0{digest}\n".encode())
    return outer.hexdigest(), len(files)


def measure_self(config: Path | None) -> SelfMeasurement:
    code, count = measure_tree(Path(edgeward.__file__).resolve().parent)
    config_digest = hashlib.sha256(config.read_bytes()).hexdigest() if config is not None else ""
    return SelfMeasurement(code, config_digest, count)
