"""What makes the audit log tamper-evident, as pure functions over its rows, its head and the TPM counter.

- Each record carries the hash of the one before it (``record_hash``), so changing or removing a record breaks
  every hash after it — but anyone can recompute hashes.
- Each record also carries a MAC (the audit key, see :mod:`.audit_key`) over its sequence number, hash and counter
  value, and the head file names the last record with a MAC of its own, in another domain: so a rewritten chain or
  a shortened log needs a MAC nobody without the key can make.
- With a TPM, every record moves a monotonic NV counter by one and the head names the value; the TPM cannot be
  rolled back, so a restored older copy of the files (or a wipe) shows as "behind the counter".

Crash windows, and why none of them reads as tampering:

- after a record's commit, before its head is written: the log is exactly one record past the head, and that
  record's own MAC (and counter value, the head's plus one) shows it was written by Edgeward. Only such a record is
  accepted; an attacker without the key cannot add one, and cannot get an older head to pair it with except from an
  older copy of the files — which the counter catches.
- after the head is written, before the TPM increment: the head is exactly one ahead of the counter. Every head
  ever written has a value at most one above the counter at the time, and the counter only grows, so an older head
  is never ahead of the current counter.
- the first anchoring to the counter: the head first says ``first`` (authenticated), then the counter is
  incremented, then the head names its value; a crash in between leaves a ``first`` head, accepted whatever the
  counter reads as long as the key store holds no mark that this anchoring finished (:data:`COUNTED_MARKER`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .audit_key import AuditKey

__all__ = ["FIRST", "GENESIS", "Head", "Row", "Verification", "check_log", "counter_text", "parse_head",
           "record_hash", "render_head", "sign_head"]

GENESIS = "0" * 64
FIRST = "first"  # a head's counter while the log is first anchored to the TPM counter

# seq, ts, kind, module, detail (JSON text), prev_hash, hash, counter, mac
Row = tuple[int, float, str, str | None, str, str, str, int | None, str | None]


def record_hash(prev_hash: str, seq: int, *, ts: float, kind: str, module: str | None,
                detail: Mapping[str, Any]) -> str:
    body = json.dumps([seq, repr(ts), kind, module, detail], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(prev_hash.encode() + b"\n" + body.encode()).hexdigest()


def counter_text(counter: int | str | None) -> str:
    return "-" if counter is None else str(counter)


@dataclass(frozen=True)
class Head:
    """The last record as the head file names it; ``mac`` is None for a head from before authentication."""

    seq: int
    hash: str
    counter: int | str | None = None
    mac: str | None = None


def sign_head(key: AuditKey, seq: int, digest: str, counter: int | str | None) -> Head:
    return Head(seq, digest, counter, key.mac("head", seq, digest, counter_text(counter)))


def render_head(head: Head) -> bytes:
    return (json.dumps({"seq": head.seq, "hash": head.hash, "counter": head.counter, "mac": head.mac},
                       separators=(",", ":")) + "\n").encode()


def parse_head(text: str) -> Head | str:
    """The head, or a sentence saying how it is damaged. The old format (``<seq> <hash>``) parses with no MAC."""
    text = text.strip()
    try:
        if not text.startswith("{"):
            seq, digest = text.split()
            return Head(int(seq), digest)
        doc = json.loads(text)
        counter = doc.get("counter")
        if not (counter is None or counter == FIRST or (isinstance(counter, int) and not isinstance(counter, bool))):
            return "the head file is damaged (its counter is neither a number nor absent)"
        if not isinstance(doc["seq"], int) or not isinstance(doc["hash"], str) or not isinstance(doc["mac"], str):
            return "the head file is damaged (a field has the wrong type)"
        return Head(doc["seq"], doc["hash"], counter, doc["mac"])
    except (ValueError, KeyError, TypeError):
        return "the head file is damaged"


@dataclass(frozen=True)
class Verification:
    ok: bool
    records: int
    head: str
    problem: str | None = None
    counter: int | None = None  # the TPM counter value the log was checked against
    note: str | None = None  # something a crash left unfinished, which the next start completes
    # What the daemon's start acts on:
    unanchored: bool = False  # no authenticated head, and nothing says there ever was one
    pending_head: bool = False  # one record committed past the head (a crash before the head update)
    pending_increment: bool = False  # the head one ahead of the TPM counter (a crash before the increment)


def _fail(count: int, prev: str, problem: str, counter: int | None = None) -> Verification:
    return Verification(False, count, prev, problem, counter)


def check_log(rows: Sequence[Row], head: Head | str | None, key: AuditKey | None, *, counter_expected: bool,
              tpm_value: int | None, anchored: bool, counted: bool) -> Verification:
    """Check the chain, the MACs, the head and the counter. ``anchored``/``counted``: the key store's marks that the
    log was anchored and anchored to the counter; ``counter_expected``: a TPM counter is there to check against."""
    prev, count = GENESIS, 0
    hashes = [GENESIS]
    for seq, ts, kind, module, detail_text, prev_hash, digest, counter, mac in rows:
        if seq != count + 1:
            return _fail(count, prev, f"record {count + 1} is missing (next is {seq})")
        if prev_hash != prev:
            return _fail(count, prev, f"record {seq} does not follow record {seq - 1}")
        try:
            detail = json.loads(detail_text)
        except json.JSONDecodeError:
            return _fail(count, prev, f"record {seq} has a damaged detail field")
        if record_hash(prev, seq, ts=ts, kind=kind, module=module, detail=detail) != digest:
            return _fail(count, prev, f"record {seq} was edited (its hash does not match)")
        if mac is not None and key is not None and not key.check(mac, "record", seq, digest, counter_text(counter)):
            return _fail(count, prev, f"record {seq} was rewritten: its MAC does not match (the chain was recomputed "
                                      "by someone without the audit key)")
        prev, count = digest, count + 1
        hashes.append(digest)
    if key is None:
        return _fail(count, prev, "the head cannot be authenticated: the audit key is not in the key store (the log "
                                  "was never anchored, or the key was deleted)")
    if isinstance(head, str):
        return _fail(count, prev, head)
    if head is None or head.mac is None:
        return _unanchored(count, prev, head, tpm_value, anchored=anchored, counted=counted)
    if not key.check(head.mac, "head", head.seq, head.hash, counter_text(head.counter)):
        return _fail(count, prev, "the head file was forged or altered: its MAC does not match")
    if isinstance(head.counter, int) and tpm_value is not None and tpm_value > head.counter:
        # Never legitimate, whatever a crash left: the counter moves only after the head naming its new value is
        # written. Checked first, so records appended later to a restored copy do not hide why it fails.
        return _behind(count, prev, head.counter, tpm_value)
    if head.seq > count:
        return _fail(count, prev, f"the log ends at record {count} but its authenticated head says record {head.seq}: "
                                  "records were cut off")
    if hashes[head.seq] != head.hash:
        return _fail(count, prev, f"record {head.seq} is not the one the authenticated head names: records were "
                                  "rewritten")
    effective = head.counter
    pending_head = count == head.seq + 1
    if count > head.seq + 1:
        return _fail(count, prev, f"records {head.seq + 1} to {count} lie past the authenticated head: they were "
                                  "added behind Edgeward's back")
    if pending_head:
        last_counter, last_mac = rows[-1][7], rows[-1][8]
        expected = head.counter + 1 if isinstance(head.counter, int) else None
        if last_mac is None or head.counter == FIRST or last_counter != expected:
            return _fail(count, prev, f"record {count} lies past the authenticated head without a valid MAC and "
                                      "counter: it was added behind Edgeward's back")
        effective = last_counter
    note = f"record {count} was committed but the head not yet updated (a crash); the next start completes it" \
        if pending_head else None
    return _against_counter(count, prev, effective, counter_expected=counter_expected, tpm_value=tpm_value,
                            counted=counted, note=note, pending_head=pending_head)


def _unanchored(count: int, prev: str, head: Head | None, tpm_value: int | None, *, anchored: bool,
                counted: bool) -> Verification:
    if anchored or counted:
        return _fail(count, prev, "the authenticated head is gone although the key store says the log was anchored: "
                                  "the log was wiped, rolled back to before it was anchored, or its head replaced")
    if tpm_value is not None:
        return _fail(count, prev, f"the log has no authenticated head but the TPM audit counter reads {tpm_value}: "
                                  "the log was wiped or rolled back", tpm_value)
    if (head is None and count > 0) or (head is not None and (head.seq != count or head.hash != prev)):
        said = "no head" if head is None else f"a head saying record {head.seq}"
        return _fail(count, prev, f"the log ends at record {count} but has {said}: records were cut off or the head "
                                  "was altered")
    return Verification(False, count, prev, "the log is not anchored yet: it has no authenticated head (the next "
                                            "start of edgeward anchors it)", unanchored=True)


def _against_counter(count: int, prev: str, effective: int | str | None, *, counter_expected: bool,
                     tpm_value: int | None, counted: bool, note: str | None, pending_head: bool) -> Verification:
    def ok(extra: str | None = None, pending_increment: bool = False) -> Verification:
        notes = "; ".join(n for n in (note, extra) if n) or None
        return Verification(True, count, prev, None, tpm_value, notes, pending_head=pending_head,
                            pending_increment=pending_increment)

    if not counter_expected:
        if effective is not None or counted:
            return _fail(count, prev, "the log is anchored to a TPM counter, but no TPM counter is available to check "
                                      "it against (is the TPM service running?)")
        return ok()
    if effective == FIRST:
        if counted:
            return _fail(count, prev, "the log was rolled back to a copy from its first anchoring to the TPM counter",
                         tpm_value)
        return ok("anchoring to the TPM counter was interrupted; the next start completes it")
    if effective is None:
        if tpm_value is not None or counted:
            return _fail(count, prev, f"the log is not anchored to the TPM counter, but the counter reads {tpm_value}: "
                                      "it was rolled back or wiped", tpm_value)
        return ok("not anchored to the TPM counter yet; the next start anchors it")
    assert isinstance(effective, int)
    if tpm_value is None:
        return _fail(count, prev, f"the log is anchored to TPM counter value {effective}, but the counter has no "
                                  "value: the TPM was cleared or its audit counter removed")
    if tpm_value == effective:
        return ok()
    if tpm_value == effective - 1:
        return ok("the TPM counter is one behind the head (a crash before its increment); the next start completes it",
                  pending_increment=True)
    if tpm_value > effective:
        return _behind(count, prev, effective, tpm_value)
    return _fail(count, prev, f"the TPM counter ({tpm_value}) is {effective - tpm_value} behind the log's head "
                              f"({effective}): its increments were lost", tpm_value)


def _behind(count: int, prev: str, head_counter: int, tpm_value: int) -> Verification:
    return _fail(count, prev, f"the log is behind the TPM counter (its head is at {head_counter}, the TPM at "
                              f"{tpm_value}): it was rolled back to an older copy, or records were cut off and an "
                              "older head put back", tpm_value)
