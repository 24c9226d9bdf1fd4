"""A small, deterministic TOML writer for the files ``edgeward config`` writes.

The standard library reads TOML but cannot write it, and the per-service files must be byte-for-byte stable (they
are compared in golden tests and diffed by operators), so this writer keeps insertion order, renders short flat
tables inline (``auto_renew = { ... }``) and everything else as ``[table]`` / ``[[array]]`` sections.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["TomlWriteError", "dumps"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
_INLINE_MAX_ITEMS = 4
_INLINE_MAX_CHARS = 100


class TomlWriteError(ValueError):
    """A value TOML cannot represent (None, or a type this writer does not know)."""


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)  # a key ending in "\n" is not bare


def _string(value: str) -> str:
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(str(k))} = {_scalar(v, f'{where}.{k}')}" for k, v in value.items()) + " }"
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return "[" + ", ".join(_scalar(v, f"{where}[{i}]") for i, v in enumerate(value)) + "]"
    raise TomlWriteError(f"{where or 'value'}: {type(value).__name__} cannot be written as TOML")


def _is_table_array(value: Any) -> bool:
    return (isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray) and bool(value)
            and all(isinstance(v, Mapping) for v in value))


def _nested(value: Mapping[str, Any]) -> bool:
    return any(isinstance(v, Mapping) or _is_table_array(v) for v in value.values())


def _inline_ok(value: Mapping[str, Any], path: list[str], where: str) -> bool:
    """Short flat values of a setting (``auto_renew = { ... }``, ``symmetric_key = { value = ... }``) read best
    inline; the tables users think of as sections (``[provisioning]``, ``[cert_issuance.<id>]``), anything nested
    and anything long get their own section."""
    if len(path) < 3 or not value or _nested(value) or len(value) > _INLINE_MAX_ITEMS:
        return False
    return len(_scalar(value, where)) <= _INLINE_MAX_CHARS


def _section(lines: list[str], path: list[str], table: Mapping[str, Any], header: str | None) -> None:
    if header is not None:
        if lines:
            lines.append("")
        lines.append(header)
    subtables: list[tuple[str, Any]] = []
    for raw_key, value in table.items():
        key = str(raw_key)
        where = ".".join([*path, key])
        if (isinstance(value, Mapping) and not _inline_ok(value, [*path, key], where)) or _is_table_array(value):
            subtables.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_scalar(value, where)}")
    for key, value in subtables:
        sub = [*path, key]
        dotted = ".".join(_key(k) for k in sub)
        if isinstance(value, Mapping):
            _section(lines, sub, value, f"[{dotted}]")
        else:
            for item in value:
                _section(lines, sub, item, f"[[{dotted}]]")


def dumps(doc: Mapping[str, Any]) -> str:
    """``doc`` as TOML text that ``tomllib.loads`` reads back as an equal document."""
    lines: list[str] = []
    _section(lines, [], doc, None)
    return "\n".join(lines) + "\n" if lines else ""
