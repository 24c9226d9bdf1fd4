"""Edgeward measures itself at start: the code it runs from and the config it was given.

The digest goes into the audit log (and, with a TPM, into a PCR), so a later reader can tell which code and
which configuration were in charge when each record was written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import edgeward

__all__ = ["SelfMeasurement", "measure_self"]

_MEASURED_SUFFIXES = (".py", ".yaml", ".json", ".toml")


@dataclass(frozen=True)
class SelfMeasurement:
    code: str  # sha256 over (relative path, file sha256) of every source file of the package, in path order
    config: str  # sha256 of the config file's bytes ("" when running on embedded defaults)
    files: int

    @property
    def combined(self) -> bytes:
        return hashlib.sha256(f"edgeward-code:{self.code}\nedgeward-config:{self.config}\n".encode()).digest()


def measure_self(config: Path | None) -> SelfMeasurement:
    root = Path(edgeward.__file__).resolve().parent
    outer = hashlib.sha256()
    count = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _MEASURED_SUFFIXES):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        outer.update(f"{path.relative_to(root).as_posix()}\0{digest}\n".encode())
        count += 1
    config_digest = hashlib.sha256(config.read_bytes()).hexdigest() if config is not None else ""
    return SelfMeasurement(outer.hexdigest(), config_digest, count)
