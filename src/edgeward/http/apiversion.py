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


def check_api_version(query_value: str | None, versions: ApiVersions) -> str:
    if query_value is None:
        raise BadRequest("missing required query parameter api-version")
    if query_value not in versions.accepted:
        raise BadRequest(
            f"unsupported api-version {query_value!r}; this route accepts {', '.join(sorted(versions.accepted))}"
        )
    return query_value
