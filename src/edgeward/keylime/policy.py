"""The runtime policy (Keylime's allow-list JSON) for this device as deployed: what the measurement list may hold.

Built from the same mapping the list uses (:mod:`.entries`): Edgeward's code and config as measured at its latest
start, and each registered module's content id as the runtime measured it at creation. Findings are never allowed,
so a re-measurement finding fails attestation. The format is keylime/ima/ima.py's RUNTIME_POLICY_SCHEMA, version 1,
all eight top-level keys; ``generator`` 3 (a list built from known digests) makes the verifier report a policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..runtime.registry import Registration
from .entries import module_digest, module_path, self_entries

__all__ = ["runtime_policy"]


def runtime_policy(started: Mapping[str, Any], registrations: Iterable[Registration]) -> dict[str, Any]:
    """``started`` is the detail of the latest ``edgeward.started`` audit record."""
    digests: dict[str, list[str]] = {}

    def allow(path: str, digest: str) -> None:
        have = digests.setdefault(path, [])
        if digest not in have:
            have.append(digest)

    for entry in self_entries(started):
        allow(entry.path, entry.sha256)
    for reg in sorted(registrations, key=lambda r: r.name):
        if reg.image_id:  # a registration without one is being created; its creation record will name it
            allow(module_path(reg.name), module_digest(reg.image_id))
    return {"meta": {"version": 1, "generator": 3}, "release": 0, "digests": digests, "excludes": [],
            "keyrings": {}, "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
            "ima-buf": {}, "verification-keys": ""}
