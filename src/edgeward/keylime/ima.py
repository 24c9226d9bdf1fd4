"""The measurement list's entries in the kernel's ``ima-ng`` format, the only list Keylime's verifier replays.

The verifier checks three things per line (keylime/ima/ima.py): the template-hash column equals H_log(template
data) (SHA-1 unless the runtime policy says otherwise, as in the kernel's own list), the file hash is one the policy
allows for that path, and PCR 10 (the quote's SHA-256 bank) replays as H(running || sha256(template data)). So each
entry carries its template data, and the PCR is extended with its SHA-256, not with the SHA-1 column.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["IMA_PCR", "ImaEntry", "replay"]

IMA_PCR = 10  # the PCR Keylime's verifier replays a measurement list into (keylime.common.IMA_PCR)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_UNSAFE = re.compile(r"\s")  # the kernel shows no blanks in a path column: they would split the line


@dataclass(frozen=True)
class ImaEntry:
    """One ``ima-ng`` line: a name (a path, for the policy's ``digests``) and the SHA-256 of what it names."""

    path: str
    sha256: str  # hex

    def __post_init__(self) -> None:
        if not _HEX64.match(self.sha256):
            raise ValueError(f"an ima-ng entry needs a SHA-256 hex digest, not {self.sha256!r}")
        if not self.path or _UNSAFE.search(self.path) or "\x00" in self.path:
            raise ValueError(f"an ima-ng path has no blanks or NULs: {self.path!r}")

    @property
    def template_data(self) -> bytes:
        """``d-ng`` then ``n-ng``, each a little-endian u32 length and its bytes (keylime/ima/ast.py)."""
        digest = b"sha256:\x00" + bytes.fromhex(self.sha256)
        name = self.path.encode() + b"\x00"
        return struct.pack("<I", len(digest)) + digest + struct.pack("<I", len(name)) + name

    @property
    def pcr_digest(self) -> bytes:
        """What PCR 10's SHA-256 bank is extended with."""
        return hashlib.sha256(self.template_data).digest()

    def line(self) -> str:
        template_hash = hashlib.sha1(self.template_data, usedforsecurity=False).hexdigest()
        return f"{IMA_PCR} {template_hash} ima-ng sha256:{self.sha256} {self.path}\n"


def replay(entries: Iterable[ImaEntry], start: bytes = bytes(32)) -> bytes:
    """PCR 10's SHA-256 value after extending ``start`` with each entry, as the verifier recomputes it."""
    value = start
    for entry in entries:
        value = hashlib.sha256(value + entry.pcr_digest).digest()
    return value
