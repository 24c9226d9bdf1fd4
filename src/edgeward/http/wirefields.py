"""Field checks of the aziot APIs' bodies (keys, certs, identity, TPM), by hand.

The bodies were validated by pydantic models (lax mode, extra fields ignored); their accept/refuse decisions and
messages are the wire contract callers see, so these checks keep them exactly: each field is looked up under its
alias first, then its other names; a body is checked whole and every field at fault is reported, in declaration
order (a nested object's fields in its place, as ``outer.inner``), as ``invalid request body: <field>: <reason>;
...``. Input values are never echoed (they may be key bytes). ``tests/unit/test_*_wire_fields.py`` hold the
pydantic models as the oracle and compare.

This module exists so that no daemon need import pydantic (about 8 MB and 0.1 s of start on a small device) and a
request costs a few dict look-ups instead of a model validation.
"""

from __future__ import annotations

import binascii
import json
import math
import re
from collections.abc import Callable
from typing import Any, Final, Protocol

__all__ = ["MAX_B64_CHARS", "BodyCheck", "InvalidBody", "JsonBody", "decode_b64", "dump_json", "response_object"]

MAX_B64_CHARS = 1_000_000

_ABSENT: Final = object()

# What pydantic-core's lax int parsing trims: Rust's char::is_whitespace (Python's str.isspace() less \x1c-\x1f).
_RUST_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
                   "\u2028\u2029\u202f\u205f\u3000"
_MAX_DIGITS = 4300  # CPython's int/str conversion limit, which pydantic applies too
_TOO_MANY_DIGITS = re.compile(rf"-?[0-9]{{{_MAX_DIGITS + 1}}}", re.ASCII)
_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_INT_UNDERSCORES = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)+", re.ASCII)

_NOT_UNICODE = "Input should be a valid string, unable to parse raw data as a unicode string"
_NOT_INT = "Input should be a valid integer"
_INT_PARSING = "Input should be a valid integer, unable to parse string as an integer"
_INT_SIZE = "Unable to parse input string as an integer, exceeded maximum size"
_INT_FRACTION = "Input should be a valid integer, got a number with a fractional part"
_NOT_FINITE = "Input should be a finite number"
_I64_BOUND = float(2**63)


class JsonBody(Protocol):
    """A body that writes its own JSON (a reply, or a client's request)."""

    def to_json(self) -> bytes: ...


class InvalidBody(ValueError):
    """A request body its route's model refuses; the message names every field at fault (a 422)."""


def decode_b64(value: object) -> bytes:
    """Standard base64 with padding, as aziot sends bytes; bounded so a hostile body cannot cost unbounded work."""
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a base64 string")
    if len(value) > MAX_B64_CHARS:
        raise ValueError("base64 value too long")
    try:
        # strict_mode accepts exactly what b64decode(validate=True) does (checked over every string of up to 7
        # characters from "AQgw/+=\\n é"), without its regular expression pass
        return binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None


def response_object(raw: bytes) -> dict[str, Any]:
    """An answer's JSON object, for a client's ``parse``: anything else is an :class:`InvalidBody`."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidBody("invalid response body: not JSON") from None
    if not isinstance(data, dict):
        raise InvalidBody("invalid response body: not a JSON object")
    return data


def dump_json(body: dict[str, Any]) -> bytes:
    """A body as pydantic's ``model_dump_json`` wrote it: compact, non-ASCII text as UTF-8, fields in order."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _is_unicode(text: str) -> bool:
    """Whether a string is text (JSON's escapes can smuggle in lone surrogates, which are not)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _int_from_text(text: str) -> int | str:
    """pydantic's lax str -> int: surrounding whitespace, a sign, ``_`` between digits and a ``.000`` tail are
    accepted. Returns the int, or the reason it is refused."""
    if not _is_unicode(text):
        return _NOT_UNICODE
    if _TOO_MANY_DIGITS.match(text):  # pydantic's first parser (JSON number syntax) gives up on size, not syntax
        return _INT_SIZE
    t = text.strip(_RUST_WHITESPACE)
    head, dot, tail = t.partition(".")
    if dot:
        if not tail or tail.strip("0"):
            return _INT_PARSING
        t = head
    if _INT.fullmatch(t) is None and (_INT_UNDERSCORES.fullmatch(t) is None):
        return _INT_PARSING
    if len(t.lstrip("+-").replace("_", "")) > _MAX_DIGITS:
        return _INT_PARSING
    return int(t)


def _lax_int(value: object) -> int | str:
    """An int as pydantic's lax mode takes one from JSON: ints (and booleans), whole floats, numeric strings."""
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return _NOT_FINITE
        if value % 1 != 0:
            return _INT_FRACTION
        if not -_I64_BOUND < value < _I64_BOUND:
            return _INT_SIZE
        return int(value)
    if isinstance(value, str):
        return _int_from_text(value)
    return _NOT_INT


class BodyCheck:
    """One body being checked: each accessor returns the field's value (a placeholder if it is at fault) and
    records what is wrong; :meth:`done` raises :class:`InvalidBody` with every fault at once."""

    __slots__ = ("_data", "_faults", "_kind", "_prefix")

    def __init__(self, data: dict[str, Any], kind: str = "request", *, _faults: list[str] | None = None,
                 _prefix: str = "") -> None:
        self._data = data
        self._faults: list[str] = [] if _faults is None else _faults
        self._kind = kind
        self._prefix = _prefix

    def _find(self, names: tuple[str, ...]) -> tuple[str, Any]:
        for name in names:
            if name in self._data:
                return name, self._data[name]
        return names[0], _ABSENT

    def _fault(self, where: str, reason: str) -> None:
        self._faults.append(f"{self._prefix}{where}: {reason}")

    def text(self, *names: str, max_length: int | None = None) -> str:
        """A required string; one with a maximum length must also be valid Unicode (pydantic checks it only then)."""
        where, value = self._find(names)
        if value is _ABSENT:
            self._fault(where, "Field required")
        elif not isinstance(value, str):
            self._fault(where, "Input should be a valid string")
        elif max_length is None:
            return value
        elif not _is_unicode(value):
            self._fault(where, _NOT_UNICODE)
        elif len(value) > max_length:
            self._fault(where, f"String should have at most {max_length} characters")
        else:
            return value
        return ""

    def optional_text(self, *names: str, check: Callable[[str], str | None] | None = None) -> str | None:
        """An optional string; ``check`` (the model's own validator) sees it first and returns why it is refused."""
        where, value = self._find(names)
        if value is _ABSENT or value is None:
            return None
        if isinstance(value, str):
            reason = check(value) if check is not None else None
            if reason is None:
                return value
            self._fault(where, f"Value error, {reason}")
        else:
            self._fault(where, "Input should be a valid string")
        return None

    def optional_int(self, *names: str) -> int | None:
        where, value = self._find(names)
        if value is _ABSENT or value is None:
            return None
        parsed = _lax_int(value)
        if isinstance(parsed, str):
            self._fault(where, parsed)
            return None
        return parsed

    def integer(self, *names: str, default: int | None = None) -> int:
        """An int, required unless it has a default; null is refused either way (the type is not optional)."""
        where, value = self._find(names)
        if value is _ABSENT:
            if default is None:
                self._fault(where, "Field required")
            return default or 0
        parsed = _lax_int(value)
        if isinstance(parsed, str):
            self._fault(where, parsed)
            return default or 0
        return parsed

    def choice(self, *names: str, choices: tuple[str, ...], default: str) -> str:
        """One of a few literal strings (a ``Literal`` field with a default); nothing is coerced."""
        where, value = self._find(names)
        if value is _ABSENT:
            return default
        if isinstance(value, str) and value in choices:
            return value
        if isinstance(value, str) and not _is_unicode(value):  # as pydantic's Literal: text first, then the value
            self._fault(where, _NOT_UNICODE)
            return default
        quoted = [f"'{c}'" for c in choices]
        expected = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + f" or {quoted[-1]}"
        self._fault(where, f"Input should be {expected}")
        return default

    def nested(self, *names: str, model: str) -> BodyCheck | None:
        """An optional nested object (a model named ``model`` on the wire's messages): a check of its own whose
        faults are reported with this body's, under the field's name; None when absent, null or at fault."""
        where, value = self._find(names)
        if value is _ABSENT or value is None:
            return None
        if isinstance(value, dict):
            return BodyCheck(value, self._kind, _faults=self._faults, _prefix=f"{self._prefix}{where}.")
        self._fault(where, f"Input should be a valid dictionary or instance of {model}")
        return None

    def b64(self, *names: str) -> bytes:
        """Required bytes, as base64 (a null is not base64 either)."""
        where, value = self._find(names)
        if value is _ABSENT:
            self._fault(where, "Field required")
            return b""
        return self._decoded(where, value)

    def optional_b64(self, *names: str) -> bytes | None:
        where, value = self._find(names)
        if value is _ABSENT or value is None:
            return None
        return self._decoded(where, value)

    def _decoded(self, where: str, value: object) -> bytes:
        try:
            return decode_b64(value)
        except ValueError as e:
            self._fault(where, f"Value error, {e}")
            return b""

    def mapping(self, *names: str, default: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """A JSON object; absent gives ``default``, null is accepted only when ``default`` is None."""
        where, value = self._find(names)
        if value is _ABSENT:
            return default
        if value is None and default is None:
            return None
        if isinstance(value, dict):
            return value
        self._fault(where, "Input should be a valid dictionary")
        return default

    def done(self) -> None:
        """Raise for every fault found so far (a nested check leaves this to its outermost body)."""
        if self._faults and not self._prefix:
            raise InvalidBody(f"invalid {self._kind} body: " + "; ".join(self._faults))
