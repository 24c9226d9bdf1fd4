"""Who may create, load or move which key ids: aziot's ``[[principal]] uid, keys = [globs]``."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["KeyPrincipal", "PrincipalTable", "glob_to_regex"]


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """aziot globs: ``*`` is any run of characters, ``?`` one character; everything else is literal."""
    out = []
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


@dataclass(frozen=True)
class KeyPrincipal:
    uid: int
    keys: tuple[str, ...]
    _patterns: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_patterns", tuple(glob_to_regex(k) for k in self.keys))

    def allows(self, key_id: str) -> bool:
        return any(p.fullmatch(key_id) for p in self._patterns)


class PrincipalTable:
    """Root and the service's own uid may use every key; anyone else needs a matching principal."""

    def __init__(self, principals: Iterable[KeyPrincipal], trusted_uids: Iterable[int] = (0,)) -> None:
        self._by_uid: dict[int, list[KeyPrincipal]] = {}
        for p in principals:
            self._by_uid.setdefault(p.uid, []).append(p)
        self._trusted = frozenset(trusted_uids)

    def allows(self, uid: int, key_id: str) -> bool:
        if uid in self._trusted:
            return True
        return any(p.allows(key_id) for p in self._by_uid.get(uid, ()))
