"""The agent's small JSON state files, and the operator requests the CLI leaves for the daemon: the daemon alone
appends to the audit log, so a request says who asked and the daemon records it (revocation clearing, bootstrap
reset)."""

from __future__ import annotations

import json
import os
import pwd
import time
from pathlib import Path
from typing import Any

__all__ = ["read_object", "requester"]


def read_object(path: Path) -> dict[str, Any] | None:
    """None when the file is absent; a file that is not a JSON object raises ValueError."""
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a JSON object")
    return doc


def requester() -> dict[str, Any]:
    """When, and who (uid and user name) is asking."""
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return {"time": time.time(), "uid": uid, "user": user}
