"""Collects every configuration problem before failing, so a user fixes them in one pass."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["SECRET_SETTINGS", "ConfigError", "Problems", "redact_text"]

T = TypeVar("T")

# Settings whose values are secrets wherever they appear: a message names them but never shows their value.
SECRET_SETTINGS = ("pin", "secret", "key_bytes", "password", "connection_string", "symmetric_key", "device_id_pk",
                   "hierarchy_authorization", "sharedaccesskey")
_SECRET_IN_TEXT = re.compile(r"(pin-value=|SharedAccessKey=|SharedAccessSignature )(?!<)[^;&'\"\s]*", re.I)


def redact_text(text: str) -> str:
    """``text`` with PKCS#11 PINs and SAS keys inside URIs or connection strings replaced by ``<redacted>``."""
    return _SECRET_IN_TEXT.sub(lambda m: m.group(1) + "<redacted>", text)


class ConfigError(Exception):
    def __init__(self, problems: list[str], source: str = "configuration") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source} has {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class Problems:
    source: str = "configuration"
    items: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, path: str, value: object, expected: str) -> None:
        lowered = path.lower()
        shown = "<redacted>" if any(s in lowered for s in SECRET_SETTINGS) else redact_text(repr(value))
        self.items.append(f"{path} = {shown}: expected {redact_text(expected)}")

    def get(self, table: Mapping[str, Any], key: str, path: str, kind: type[T], default: T) -> T:
        if key not in table:
            return default
        value = table[key]
        if kind is int and isinstance(value, bool):
            self.add(f"{path}.{key}", value, "an integer")
            return default
        if not isinstance(value, kind):
            self.add(f"{path}.{key}", value, {str: "a string", int: "an integer", bool: "true or false",
                                               list: "a list", dict: "a table"}.get(kind, kind.__name__))
            return default
        return value

    def warn_unknown(self, table: Mapping[str, Any], known: set[str], path: str) -> None:
        for key in table:
            if key not in known:
                self.warnings.append(f"{path + '.' if path else ''}{key}: unknown setting, ignored")

    def raise_if_any(self) -> None:
        if self.items:
            # Two readers of one setting may report the same problem; the user needs to read it once.
            raise ConfigError(list(dict.fromkeys(self.items)), self.source)
