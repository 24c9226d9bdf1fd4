"""Base64 keys as IoT Edge's configuration takes them: padding optional.

aziot's config readers decode keys with padding made optional, and IoT Edge's own test configurations carry keys
without their trailing ``=``; an operator moving such a file to Edgeward must not have it refused. Everything else
stays strict: only the standard alphabet, no whitespace, no length that no encoding can have.
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["decode_key"]

_ALPHABET = re.compile(rb"^[A-Za-z0-9+/]*={0,2}$")


def decode_key(text: str | bytes) -> bytes:
    """The bytes of a standard-alphabet base64 key, padded or not; ValueError for anything else."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    if not _ALPHABET.match(raw):
        raise ValueError("not base64 (standard alphabet)")
    body = raw.rstrip(b"=")
    if len(body) % 4 == 1 or (raw != body and len(raw) % 4 != 0):
        raise ValueError("not base64 (impossible length or padding)")
    try:
        return base64.b64decode(body + b"=" * (-len(body) % 4), validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None
