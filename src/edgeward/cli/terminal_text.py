"""Module output made safe to show on the operator's terminal.

A module writes what it likes to its stdout; `edgeward logs` used to copy it byte for byte, so a module could move
the cursor, clear or overwrite lines the operator reads, set the window title or write the clipboard (ESC and OSC
sequences, C1 controls such as U+009B CSI). On a terminal every control character but newline and tab is shown as an
escape (``\\x1b``, ``\\u009b``); a carriage return is kept only where it ends a line. Piped output stays byte for byte,
as docker and iotedge give it, for tools that read it.
"""

from __future__ import annotations

import codecs
import re

__all__ = ["TerminalText"]

# C0 controls but tab and newline, DEL, C1 controls; a CR that does not end a line (it would overwrite this one)
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]|\r(?!\n)")


def _shown(match: re.Match[str]) -> str:
    c = match.group()
    return f"\\x{ord(c):02x}" if ord(c) < 0x80 else f"\\u{ord(c):04x}"


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
