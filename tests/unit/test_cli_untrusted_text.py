"""What the daemon, a module, a certificate or the audit log says reaches the operator's terminal as text: never as
rich markup, never as escape sequences (session 14, brk14b list_markup_escapes: a deployment's image path forged
green rows in root's `edgeward list`, moved the cursor, set the title, and an unbalanced closing tag made `list` and
`system status` die with a MarkupError)."""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from edgeward.cli import runtime_cmds
from edgeward.cli.status import Status, render_status

ESCAPES = "\x1b]0;PWNED\x1b\\\x1b[1A\x1b[2K"
FORGED = "[bold green]fake-ok[/bold green]"
HOSTILE = [f"/tmp/w/{ESCAPES}{FORGED}/s", "/tmp/w/q[/blink]/s", "/tmp/w/:warning: \u202eexe.txt\nproblem: none",
           "/tmp/w/trailing\\"]


def _module(name: str, image: str) -> dict[str, Any]:
    return {"id": "0123456789abcdef", "name": name, "config": {"settings": {"image": image, "imageHash": "sha256:x"}},
            "status": {"runtimeStatus": {"status": "running"}, "startTime": f"{ESCAPES}[red]2026[/red]"}}


def _printed(*renderables: object) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=400, force_terminal=False, color_system=None)
    for r in renderables:
        console.print(r)
    return buf.getvalue()


def _assert_shown_not_obeyed(text: str) -> None:
    assert "\x1b" not in text and "\u202e" not in text and "\u26a0" not in text  # no ESC, bidi override, emoji
    assert FORGED in text  # the markup is shown as typed, not rendered
    assert "[/blink]" in text and "\\x1b]0;PWNED" in text


def test_status_shows_hostile_images_subjects_and_problems_as_text() -> None:
    status = Status(modules=[_module(f"m{i}", image) for i, image in enumerate(HOSTILE)],
                    identities=[{"moduleId": "m0", "generationId": f"{ESCAPES}gen"}],
                    certs=[("c", f"CN={FORGED}{ESCAPES}", dt.datetime.now(dt.UTC) + dt.timedelta(days=30))],
                    audit=(False, 3, "ab" * 32, f"record 2 [/blink]{ESCAPES}"),
                    problems=[f"integrity monitor: {FORGED}\nforged line[/blink]"])
    text = _printed(*render_status(status))
    _assert_shown_not_obeyed(text)
    assert "/tmp/w/trailing\\" in text and "TAMPERED" in text and "\\x0aproblem: none" in text
    assert "\\x0aforged line[/blink]" in text  # a problem stays one line


@pytest.fixture
def listed(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    modules = [_module(f"m{i}{ESCAPES}", image) for i, image in enumerate(HOSTILE)]
    monkeypatch.setattr(runtime_cmds, "_call", lambda run_dir, op: modules)
    monkeypatch.setattr(runtime_cmds, "out", Console(width=400))  # wide enough that no cell is cut
    return modules


def test_list_shows_hostile_names_images_and_start_times_as_text(listed: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(runtime_cmds.list_modules, [])
    assert result.exit_code == 0, result.output
    _assert_shown_not_obeyed(result.output)
    assert "[red]2026[/red]" in result.output


def test_list_json_stays_exact(listed: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(runtime_cmds.list_modules, ["--json"])
    assert result.exit_code == 0 and json.loads(result.output) == listed


def test_helpers() -> None:
    from edgeward.cli.terminal_text import cell, markup_safe, shown  # the tests above run without them (on main)

    assert shown("a\x1b[2Kb\tc\nd\u009b") == "a\\x1b[2Kb\\x09c\\x0ad\\u009b"
    assert shown("a\tb\nc\rd\r\n", lines=True) == "a\tb\nc\\x0dd\r\n"
    assert shown("Zürich 東京 /usr/bin/sleep") == "Zürich 東京 /usr/bin/sleep"
    assert _printed(f"[red]{markup_safe(f'[/blink]{FORGED}')}[/red]") == f"[/blink]{FORGED}\n"
    assert _printed("[red]" + markup_safe("C:\\") + "[/red]") == "C:\\\n"  # a trailing backslash escapes no tag
    assert cell(FORGED).plain == FORGED
