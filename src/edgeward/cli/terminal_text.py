"""Module output made safe to show on the operator's terminal.

A module writes what it likes to its stdout; `edgeward logs` used to copy it byte for byte, so a module could move
the cursor, clear or overwrite lines the operator reads, set the window title or write the clipboard (ESC and OSC
sequences, C1 controls such as U+009B CSI). On a terminal every control character but newline and tab is shown as an
escape (``\\x1b``, ``\\u009b``); a carriage return is kept only where it ends a line. Piped output stays byte for byte,
as docker and iotedge give it, for tools that read it.

The same holds for every other string the CLI shows from the daemon, a module, a certificate or a config (a
module's image path, a start time, a certificate subject, an error message): :func:`shown` neutralises its control
characters (newline and tab too, since a table cell or a status line is one line), :func:`cell` makes it a rich
``Text`` that is never read as markup or emoji codes, and :func:`markup_safe` escapes it for a markup string (session
14, brk14b list_markup_escapes: an image path moved the cursor and forged green rows in root's `edgeward list`, and
an unbalanced ``[/blink]`` made `list` and `system status` die with a MarkupError).
"""

from __future__ import annotations

import codecs
import re

from rich.markup import escape
from rich.text import Text

__all__ = ["TerminalText", "cell", "markup_safe", "shown"]

# C0 controls but tab, newline and CR; DEL; C1 controls
_CONTROLS_BUT_LINES = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
# the line and paragraph separators, the bidi marks, overrides and isolates (they reorder what follows on the line:
# a path could show as another)
_REORDERING = "\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069"
# a module's log: those controls, and a CR that does not end a line (it would overwrite this one)
_CONTROL = re.compile(f"[{_CONTROLS_BUT_LINES}]|\r(?!\n)")
# In one line: every C0 control (newline and tab too), DEL, C1, and what reorders a line
_CONTROL_ONE_LINE = re.compile(f"[\x00-\x1f\x7f-\x9f{_REORDERING}]")
# Several lines (a message listing problems): newline and tab kept, a CR only where it ends a line
_CONTROL_LINES = re.compile(f"[{_CONTROLS_BUT_LINES}{_REORDERING}]|\r(?!\n)")


def _shown(match: re.Match[str]) -> str:
    c = match.group()
    return f"\\x{ord(c):02x}" if ord(c) < 0x80 else f"\\u{ord(c):04x}"


def shown(value: object, *, lines: bool = False) -> str:
    """``value`` as text whose control characters are shown as escapes (``\\x1b``), not obeyed by the terminal;
    ``lines``: newlines and tabs are kept (a multi-line message), else the text stays on one line."""
    return (_CONTROL_LINES if lines else _CONTROL_ONE_LINE).sub(_shown, str(value))


def markup_safe(value: object, *, lines: bool = False) -> str:
    """``value`` to put inside a rich markup string: controls shown (see :func:`shown`) and ``[`` escaped."""
    return escape(shown(value, lines=lines))


def cell(value: object, style: str = "") -> Text:
    """``value`` as a rich Text (a table cell, a line): never parsed as markup or emoji codes, controls shown."""
    return Text(shown(value), style=style)


class TerminalText:
    """One stream's bytes to terminal-safe bytes; a UTF-8 sequence (or a CRLF) split across chunks is kept whole."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
        self._held_cr = False

    def feed(self, data: bytes, final: bool = False) -> bytes:
        text = ("\r" if self._held_cr else "") + self._decoder.decode(data, final)
        self._held_cr = not final and text.endswith("\r")
        if self._held_cr:
            text = text[:-1]  # the next chunk says whether it ends a line
        return _CONTROL.sub(_shown, text).encode("utf-8")
