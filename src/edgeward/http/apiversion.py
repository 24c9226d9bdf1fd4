"""The ``?api-version=`` contract: every request names a version its route supports, or it gets a 400."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import BadRequest

__all__ = ["ApiVersions", "check_api_version"]


@dataclass(frozen=True, slots=True)
class ApiVersions:
    """The versions one route accepts. Versions are ISO dates, so string order is chronological order."""

    accepted: frozenset[str]

    @classmethod
    def from_(cls, minimum: str, known: Iterable[str]) -> ApiVersions:
        """All known versions at or after ``minimum``: how aziot routes declare their range."""
        return cls(frozenset(v for v in known if v >= minimum))

    @classmethod
    def only(cls, *versions: str) -> ApiVersions:
        return cls(frozenset(versions))


def check_api_version(query_value: str | Iterable[str] | None, versions: ApiVersions) -> str:
    """``query_value``: the parameter's value, or all its values (more than one is ambiguous, so refused)."""
    if query_value is not None and not isinstance(query_value, str):
        values = list(query_value)
        if len(values) > 1:
            raise BadRequest("api-version is given more than once; give it once")
        query_value = values[0] if values else None
    if query_value is None:
        raise BadRequest("missing required query parameter api-version")
    if query_value not in versions.accepted:
        raise BadRequest(
            f"unsupported api-version {query_value!r}; this route accepts {', '.join(sorted(versions.accepted))}"
        )
    return query_value
