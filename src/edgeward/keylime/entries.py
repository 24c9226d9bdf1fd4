"""Which audit records become measurement-list entries, and as what: the one mapping both the list (what the
device reports) and the policy writer (what the verifier allows) use, so the two cannot drift apart.

- ``edgeward.started``: Edgeward itself, ``/edgeward/self/code`` and ``/edgeward/self/config`` (the digests
  :mod:`edgeward.attest.selfmeasure` took at start). A restart on the same code and config repeats the same
  digests, which the policy allows.
- ``module.created``: ``/edgeward/modules/<name>`` with the image (or executable) digest the runtime measured when
  it created the module.
- a re-measurement finding (``integrity.binary_changed``, ``integrity.image_swapped``, ...):
  ``/edgeward/findings/<kind>/<module>`` with a digest of the record. No policy names a finding path, so a finding
  reaches the verifier as ``not_in_allowlist``: the device fails attestation.

A finding the audit log could not take (a full disk) becomes the same path with a digest of what was known of it
(:func:`unrecorded_entry`): the list holds it from memory and its journal inline, so the verifier hears of it all
the same.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from ..attest.audit import AuditRecord
from .ima import ImaEntry

__all__ = ["FINDING_KINDS", "SELF_CODE", "SELF_CONFIG", "entries_of", "finding_kind", "module_digest",
           "module_path", "self_entries", "unrecorded_entry"]

SELF_CODE, SELF_CONFIG = "/edgeward/self/code", "/edgeward/self/config"
FINDING_KINDS = frozenset({"binary_changed", "image_swapped", "engine_object_replaced", "unregistered",
                           "registration_tampered"})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BLANK = re.compile(r"\s")
_EMPTY = hashlib.sha256(b"").hexdigest()


def _name(text: str) -> str:
    return _BLANK.sub("_", text.replace("\x00", "_")) or "_"


def module_path(name: str) -> str:
    return f"/edgeward/modules/{_name(name)}"


def module_digest(image_id: str) -> str:
    """The runtime's ``sha256:<hex>`` content id as bare hex; anything else is hashed, so it still names one image."""
    bare = image_id.removeprefix("sha256:")
    return bare if _HEX64.match(bare) else hashlib.sha256(image_id.encode()).hexdigest()


def self_entries(detail: Mapping[str, Any]) -> list[ImaEntry]:
    code, config = str(detail.get("code", "")), str(detail.get("config", "")) or _EMPTY
    return [ImaEntry(SELF_CODE, module_digest(code)), ImaEntry(SELF_CONFIG, module_digest(config))]


def finding_kind(record_kind: str) -> str | None:
    """``binary_changed`` for ``integrity.binary_changed``; None for a record kind that is no finding."""
    kind = record_kind.removeprefix("integrity.")
    return kind if record_kind.startswith("integrity.") and kind in FINDING_KINDS else None


def _finding_path(kind: str, module: str | None) -> str:
    return f"/edgeward/findings/{kind}/{_name(module or '_')}"


def entries_of(record: AuditRecord) -> list[ImaEntry]:
    """The entries one audit record contributes (none for most kinds)."""
    if record.kind == "edgeward.started":
        return self_entries(record.detail)
    if record.kind == "module.created" and record.module:
        return [ImaEntry(module_path(record.module), module_digest(str(record.detail.get("image_id", ""))))]
    kind = finding_kind(record.kind)
    if kind is not None:
        evidence = json.dumps({"seq": record.seq, "hash": record.hash}, sort_keys=True).encode()
        return [ImaEntry(_finding_path(kind, record.module), hashlib.sha256(evidence).hexdigest())]
    return []


def unrecorded_entry(record_kind: str, module: str | None, detail: Mapping[str, Any], ts: float) -> ImaEntry | None:
    """The entry of a finding the audit log could not take; None for any other kind (only findings must reach the
    verifier whatever the disk does: a module created or Edgeward started unrecorded changes no verdict)."""
    kind = finding_kind(record_kind)
    if kind is None:
        return None
    evidence = json.dumps({"unrecorded": record_kind, "module": module, "detail": detail, "ts": ts},
                          sort_keys=True, default=str).encode()
    return ImaEntry(_finding_path(kind, module), hashlib.sha256(evidence).hexdigest())
