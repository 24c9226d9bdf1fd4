"""Whole numbers as callers, servers and config files write them: ASCII digits, and not too many of them.

``str.isdigit()`` is true of "²" (which ``int()`` then refuses: a 500 where a 400 was due) and of other scripts'
digits (which ``int()`` reads: "١٢" is 12, so a check made on the text and one made on the number could disagree);
and ``int()`` refuses more than 4,300 digits. Every number Edgeward takes from outside as text is checked here first.
"""

from __future__ import annotations

__all__ = ["is_number", "number_or_none"]


def is_number(text: str, max_digits: int = 19) -> bool:
    """True for 1 to ``max_digits`` ASCII digits (19 holds every signed 64-bit value)."""
    return 0 < len(text) <= max_digits and text.isascii() and text.isdigit()


def number_or_none(text: str | None, max_digits: int = 19) -> int | None:
    """The number ``text`` writes, or None when it is absent or not a number by :func:`is_number`."""
    return int(text) if text is not None and is_number(text, max_digits) else None
