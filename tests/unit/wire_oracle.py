"""What the wire oracle tests share: the pydantic models' 422 message, as http/body.py wrote it from a
ValidationError before the wire types checked their fields by hand, and the models' base64 type."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, PlainSerializer, ValidationError

from edgeward.http.wirefields import InvalidBody, decode_b64

__all__ = ["B64", "describe", "outcome", "same_outcome"]

B64 = Annotated[bytes, BeforeValidator(decode_b64),
                PlainSerializer(lambda b: base64.b64encode(b).decode(), return_type=str)]


def describe(error: ValidationError) -> str:
    # Field paths and reasons only: input values may be secrets (key bytes, PINs) and must not be echoed.
    parts = []
    for item in error.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "invalid request body: " + "; ".join(parts)


def outcome(parse: Callable[[dict[str, Any]], Any], data: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "ok", parse(data)
    except (InvalidBody, ValidationError) as e:
        return "refused", describe(e) if isinstance(e, ValidationError) else str(e)


def same_outcome(model: type[BaseModel], ours: Callable[[dict[str, Any]], Any], data: dict[str, Any]) -> None:
    """Both accept ``data`` with the same field values (nested ones too), or both refuse it with the same 422."""
    expected, got = outcome(model.model_validate, data), outcome(ours, data)
    assert got[0] == expected[0], (expected, got)
    if got[0] == "refused":
        assert got[1] == expected[1]
    else:
        assert dataclasses.asdict(got[1]) == _fields(expected[1])


def _fields(model: BaseModel) -> dict[str, Any]:
    """A model's field values as validated (bytes stay bytes), nested models as dicts, as ``dataclasses.asdict``."""
    return {name: _fields(value) if isinstance(value, BaseModel) else value for name, value in model}
