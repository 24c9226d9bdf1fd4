"""The keys fallback backend's "kept in the secondary store" line, which a principal re-importing its own key in a
loop would write per request (found while fixing h/brk13a a01): the first per key an interval, the rest at DEBUG
and counted."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from edgeward.keys.backends import fallback
from edgeward.keys.backends.base import UnsupportedByBackend
from edgeward.keys.model import KeyUsage, SymmetricKeyInfo
from edgeward.repeat_log import RepeatLog


class Refusing:
    name = "token"

    def import_key(self, ref: str, key: bytes, usage: KeyUsage) -> SymmetricKeyInfo:
        raise UnsupportedByBackend("no HMAC keys on this token")

    def delete_key(self, ref: str) -> None:
        pass


class Taking:
    name = "file"

    def import_key(self, ref: str, key: bytes, usage: KeyUsage) -> SymmetricKeyInfo:
        return SymmetricKeyInfo("g1", usage)


def test_a_key_imported_in_a_loop_logs_one_kept_in_line(caplog: pytest.LogCaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # the log is the module's, shared with every test before this one: a fresh one, so no earlier key's summary
    monkeypatch.setattr(fallback, "_KEPT_LOG", RepeatLog(fallback.log, "symmetric key kept in the secondary store"))
    backend = fallback.SymmetricFallback(Refusing(), Taking())  # type: ignore[arg-type]
    caplog.set_level(logging.DEBUG, logger="edgeward.keys")
    for _ in range(200):
        backend.import_key("mod1-key", b"k" * 32, KeyUsage.SIGN)
    shown = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert shown == ["symmetric key 'mod1-key' kept in file: no HMAC keys on this token"], shown
    caplog.clear()
    fallback._KEPT_LOG.flush()
    summary: list[Any] = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(summary) == 1 and summary[0].startswith("199 more 'symmetric key kept in the secondary store'"), summary
