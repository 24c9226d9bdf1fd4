"""`edgeward logs` on a terminal: a module's escape sequences are shown, not obeyed (session-13 review, brk13b
log_terminal_escapes: clear line, cursor moves, window title and clipboard writes reached root's terminal)."""

from __future__ import annotations

import pytest

from edgeward.cli.terminal_text import TerminalText


def shown(*chunks: bytes) -> bytes:
    t = TerminalText()
    return b"".join(t.feed(c) for c in chunks) + t.feed(b"", final=True)


@pytest.mark.parametrize("hostile", [
    b"\x1b[2K\x1b[1Aforged line\n",  # erase the line, move up
    b"\x1b]0;owned\x07",  # window title
    b"\x1b]52;c;ZXZpbA==\x07",  # clipboard write (OSC 52)
    "\u009b2J".encode(),  # C1 CSI as UTF-8: clear screen
    b"ok\rforged\n",  # a carriage return that overwrites the line
    b"\x00\x08\x7f",
])
def test_no_control_character_but_newline_and_tab_reaches_the_terminal(hostile: bytes) -> None:
    out = shown(hostile)
    assert not any((b < 0x20 and b not in b"\n\t") or b == 0x7F for b in out), out
    assert "\u009b".encode() not in out and b"\xc2\x9b" not in out


def test_ordinary_output_is_unchanged_even_split_across_chunks() -> None:
    text = "Zürich 東京\tline\r\nnext\n".encode()
    assert shown(text) == text
    assert shown(*[text[i:i + 1] for i in range(len(text))]) == text  # UTF-8 and CRLF split byte by byte
    assert shown(b"\x1b[31m") == b"\\x1b[31m"
    assert shown(b"\xff\xfe") == b"\\xff\\xfe"  # not UTF-8: shown as its bytes
