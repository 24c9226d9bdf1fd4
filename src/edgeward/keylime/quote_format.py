"""A quote as Keylime carries it: ``"r" + b64(TPMS_ATTEST) + ":" + b64(TPMT_SIGNATURE) + ":" + b64(PCR blob)``.

The PCR blob is tpm2-tools' in-memory layout (``tpm2_quote -o``), which keylime/tpm/tpm_util.py parses: a
TPML_PCR_SELECTION with 16 selection slots, then the PCR values in TPML_DIGEST lists of 8, each digest slot 64
bytes, all little-endian. The verifier hashes the values it finds there and demands the quote's pcrDigest, so the
values must be the ones the TPM quoted (see :func:`pcrs_of_mask`, and the retry in :mod:`.tpm_ops`).
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence

__all__ = ["MAX_PCR", "format_quote", "pcr_blob", "pcrs_of_mask"]

MAX_PCR = 23
_SHA256 = 0x000B  # TPM2_ALG_SHA256
_SLOTS = 16  # TPML_PCR_SELECTION.pcrSelections in tpm2-tss's struct
_PER_LIST = 8  # TPML_DIGEST.digests
_DIGEST_SLOT = 64  # sizeof(TPMU_HA)
DATA_PCR = 16  # where the agent binds its payload key (keylime/tpm/tpm_main.py:_check_data_pcr)


def pcrs_of_mask(mask: str) -> list[int]:
    """The PCRs to quote: exactly those the verifier's mask names, plus 16 (the key binding). Never 10 on our own:
    a quote with PCR 10 makes the verifier demand and replay a measurement list."""
    text = mask.lower()
    if not text.startswith("0x") or len(text) > 10:
        raise ValueError(f"mask must be hex like 0x400, not {mask!r}")
    try:
        bits = int(text, 16)
    except ValueError:
        raise ValueError(f"mask must be hex like 0x400, not {mask!r}") from None
    if bits >> (MAX_PCR + 1):
        raise ValueError(f"mask {mask} names PCRs above {MAX_PCR}")
    return sorted({p for p in range(MAX_PCR + 1) if bits >> p & 1} | {DATA_PCR})


def pcr_blob(pcrs: Sequence[int], values: Sequence[bytes]) -> bytes:
    """The SHA-256 bank's ``pcrs`` (ascending) with their ``values``, in tpm2-tools' layout."""
    if list(pcrs) != sorted(set(pcrs)) or len(pcrs) != len(values):
        raise ValueError("one value per PCR, PCRs ascending")
    select = 0
    for pcr in pcrs:
        select |= 1 << pcr
    out = struct.pack("<I", 1) + struct.pack("<HB3s2x", _SHA256, 3, select.to_bytes(3, "little"))
    out += bytes(8 * (_SLOTS - 1))
    chunks = [values[i:i + _PER_LIST] for i in range(0, len(values), _PER_LIST)]
    out += struct.pack("<I", len(chunks))
    for chunk in chunks:
        out += struct.pack("<I", len(chunk))
        for i in range(_PER_LIST):
            value = chunk[i] if i < len(chunk) else b""
            out += struct.pack("<H", len(value)) + value.ljust(_DIGEST_SLOT, b"\x00")
    return out


def format_quote(attest: bytes, signature: bytes, blob: bytes) -> str:
    """``attest`` is TPMS_ATTEST's content (without the TPM2B size), ``signature`` a marshalled TPMT_SIGNATURE."""
    b64 = base64.b64encode
    return f"r{b64(attest).decode()}:{b64(signature).decode()}:{b64(blob).decode()}"
