"""Where a key id lives: the default backend, or a preloaded location named by a URI."""

from __future__ import annotations

from dataclasses import dataclass

from .backends.base import KeyBackend

__all__ = ["KeyLocation", "KeyLocator"]


@dataclass(frozen=True, slots=True)
class KeyLocation:
    backend: KeyBackend
    ref: str
    preloaded: bool = False


class KeyLocator:
    """Maps key ids to locations. Preloaded ids are fixed by configuration; every other id uses the default."""

    def __init__(self, default: KeyBackend, preloaded: dict[str, KeyLocation] | None = None) -> None:
        self.default = default
        self._preloaded = dict(preloaded or {})

    def locate(self, key_id: str) -> KeyLocation:
        return self._preloaded.get(key_id) or KeyLocation(self.default, key_id)

    def backends(self) -> list[KeyBackend]:
        seen: dict[int, KeyBackend] = {id(self.default): self.default}
        for loc in self._preloaded.values():
            seen.setdefault(id(loc.backend), loc.backend)
        return list(seen.values())
