"""Commands that drive a running Edgeward through its management API (as root), iotedge-style."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from ..attest.audit import AuditLog
from ..attest.tpm_quote import Quote, verify_quote
from ..http.errors import HttpError
from ..runtime.mgmt_client import ManagementClient
from ..tpm.client import TpmClient
from .output_file import OutputRefused, check_output, write_output
from .paths import config_option, default_run_dir, default_state_dir, run_option, state_option
from .terminal_text import TerminalText, cell, markup_safe

if TYPE_CHECKING:
    from ..daemon import DaemonSettings
    from ..keylime.settings import KeylimeSettings

__all__ = ["attest", "audit", "list_modules", "logs", "restart"]

T = TypeVar("T")
out = Console(emoji=False)
err = Console(stderr=True, emoji=False)
EXIT_FAILED, EXIT_UNREACHABLE = 1, 5


def _e(value: object) -> str:
    """Text from the daemon, a config or a module (values, paths, messages quoting them) inside a markup string:
    printed as it is on one line, never read as rich markup nor obeyed as terminal escapes."""
    return markup_safe(value)


def _settings_or_exit(config: Path | None, state_dir: Path | None, run_dir: Path | None) -> DaemonSettings:
    from ..config.problems import ConfigError  # noqa: PLC0415
    from ..daemon import load_settings  # noqa: PLC0415

    try:
        return load_settings(config, state_dir or default_state_dir(), run_dir or default_run_dir())
    except ConfigError as e:  # one problem a line
        err.print(f"[red]error:[/red] {markup_safe(e, lines=True)}", highlight=False)
        sys.exit(EXIT_FAILED)


def _keylime_settings_or_exit(config: Path | None, state_dir: Path | None, run_dir: Path | None,
                              nothing: str) -> KeylimeSettings:
    """The [edgeward.keylime] table, or exit saying there is ``nothing`` without it."""
    settings = _settings_or_exit(config, state_dir, run_dir)
    if settings.keylime is None:
        err.print(f"[red]error:[/red] no [edgeward.keylime] table is configured: {nothing}", highlight=False)
        sys.exit(EXIT_FAILED)
    return settings.keylime


def _mgmt_socket(run_dir: Path | None) -> Path:
    return (run_dir or default_run_dir()) / "mgmt" / "mgmt.sock"


def _call(run_dir: Path | None, op: Callable[[ManagementClient], Awaitable[T]]) -> T:
    socket = _mgmt_socket(run_dir)

    async def go() -> T:
        client = ManagementClient(socket)
        try:
            return await op(client)
        finally:
            await client.close()

    try:
        return asyncio.run(go())
    except HttpError as e:
        err.print(f"[red]error:[/red] {_e(e.message)}", highlight=False)
        sys.exit(EXIT_FAILED)
    except (FileNotFoundError, ConnectionError, OSError) as e:
        err.print(f"[red]error:[/red] cannot reach Edgeward's management API at {_e(socket)} ({e.__class__.__name__}); "
                  f"is it running? (edgeward run, or systemctl status edgeward)", highlight=False)
        sys.exit(EXIT_UNREACHABLE)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@click.command("list")
@run_option
@json_option
def list_modules(run_dir: Path | None, as_json: bool) -> None:
    """List the modules and their state."""
    modules: list[dict[str, Any]] = _call(run_dir, lambda c: c.list_modules())
    if as_json:
        print(json.dumps(modules, indent=2))
        return
    table = Table(title="modules")
    for col in ("name", "status", "image", "started", "id"):
        table.add_column(col)
    for m in modules:
        status = m["status"]["runtimeStatus"]["status"]
        color = {"running": "green", "failed": "red", "stopped": "yellow"}.get(status, "white")
        # each value is the daemon's or a module's (a deployment names the image): plain cells, never markup
        table.add_row(cell(m["name"]), cell(status, color), cell(m["config"]["settings"]["image"]),
                      cell(m["status"].get("startTime", "-")), cell(str(m["id"])[:12]))
    out.print(table)


@click.command()
@click.argument("module")
@click.option("--tail", type=int, default=None, help="Only the last N lines.")
@click.option("--since", default=None,
              help="Only lines since: unix seconds, RFC 3339, or a duration ago (10m, \"2 days 3 hours\").")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--timestamps", is_flag=True, help="Prefix each line with its time.")
@run_option
def logs(module: str, *, tail: int | None, since: str | None, follow: bool, timestamps: bool,
         run_dir: Path | None) -> None:
    """Print a module's logs (stdout to stdout, stderr to stderr)."""

    streams = {1: sys.stdout, 2: sys.stderr}
    # a module's escape sequences never reach a terminal as such (terminal_text says why); pipes get the bytes
    shown = {n: TerminalText() for n, s in streams.items() if s.isatty()}

    async def go(c: ManagementClient) -> None:
        async for chunk in c.logs(module, follow=follow, tail=tail, since=since, timestamps=timestamps):
            n = 2 if chunk.stream == 2 else 1
            text = shown.get(n)
            streams[n].buffer.write(text.feed(chunk.data) if text is not None else chunk.data)
            streams[n].buffer.flush()
        for n, text in shown.items():
            streams[n].buffer.write(text.feed(b"", final=True))
            streams[n].buffer.flush()

    with contextlib.suppress(KeyboardInterrupt):
        _call(run_dir, go)


@click.command()
@click.argument("module")
@run_option
def restart(module: str, run_dir: Path | None) -> None:
    """Restart a module."""
    _call(run_dir, lambda c: c.action(module, "restart"))
    out.print(f"restarted {_e(module)}")


@click.group()
def audit() -> None:
    """The audit log: hash-chained, MAC'd by the keys service's audit key, anchored to the TPM counter."""


@audit.command("verify")
@config_option
@state_option
@run_option
def audit_verify(config: Path | None, state_dir: Path | None, run_dir: Path | None) -> None:
    """Check that no audit record was edited, deleted or cut off, and (with a TPM) that the log is not an older
    copy or a wiped one: exit 1 if it was. Reaches the keys and TPM services over their sockets, or opens them
    here (as root) when they are not running."""
    from ..attest.audit_open import verify_installed_log  # noqa: PLC0415
    from ..config.problems import ConfigError  # noqa: PLC0415
    from ..daemon import load_settings  # noqa: PLC0415

    state = state_dir or default_state_dir()
    try:
        settings = load_settings(config, state, run_dir or default_run_dir())
        result = asyncio.run(verify_installed_log(settings))
    except ConfigError as e:  # one problem a line
        err.print(f"[red]error:[/red] {markup_safe(e, lines=True)}", highlight=False)
        sys.exit(EXIT_FAILED)
    except HttpError as e:
        err.print(f"[red]error:[/red] cannot get the audit key or counter: {_e(e.message)}", highlight=False)
        sys.exit(EXIT_UNREACHABLE)
    except OSError as e:
        err.print(f"[red]error:[/red] cannot reach the keys or TPM service: {_e(e)}", highlight=False)
        sys.exit(EXIT_UNREACHABLE)
    if result is None:
        err.print(f"[red]error:[/red] no audit log under {_e(state / 'audit')}", highlight=False)
        sys.exit(EXIT_FAILED)
    if result.ok:
        anchor = f", TPM counter {result.counter}" if result.counter is not None else ""
        out.print(f"[green]audit log intact[/green]: {result.records} records, head {_e(result.head[:16])}{_e(anchor)}",
                  highlight=False)
        if result.note:
            out.print(f"note: {_e(result.note)}", highlight=False)
        return
    err.print(f"[red]audit log TAMPERED[/red]: {_e(result.problem)} (first {_e(result.records)} records check out)",
              highlight=False)
    sys.exit(EXIT_FAILED)


@audit.command("show")
@state_option
@click.option("--last", type=int, default=20, help="How many of the latest records.")
@json_option
def audit_show(state_dir: Path | None, last: int, as_json: bool) -> None:
    """Print the latest audit records."""
    log = AuditLog((state_dir or default_state_dir()) / "audit")
    try:
        head, _ = log.head()
        records = log.records(since=max(head - last, 0))
    finally:
        log.close()
    if as_json:
        print(json.dumps([r.__dict__ for r in records], indent=2, default=str))
        return
    table = Table(title="audit log")
    for col in ("#", "time", "event", "module", "detail"):
        table.add_column(col)
    import datetime as dt  # noqa: PLC0415

    for r in records:
        table.add_row(str(r.seq), dt.datetime.fromtimestamp(r.ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
                      cell(r.kind), cell(r.module or "-"), cell(json.dumps(dict(r.detail))[:80]))
    out.print(table)


@click.group()
def attest() -> None:
    """Edgeward's own measurement, anchored in the TPM."""


@attest.command("quote")
@click.option("--nonce", required=True, help="The verifier's nonce, hex (1 to 64 bytes).")
@run_option
@state_option
def attest_quote(nonce: str, run_dir: Path | None, state_dir: Path | None) -> None:
    """A TPM quote over PCR 23 (Edgeward's measurement of its code and config) with your nonce, checked here
    against the attestation key, the nonce and the measurement recorded in the audit log at start."""
    try:
        raw_nonce = bytes.fromhex(nonce)
    except ValueError:
        err.print("[red]error:[/red] --nonce must be hex")
        sys.exit(2)
    socket = (run_dir or default_run_dir()) / "tpmd.sock"

    async def go() -> Quote:
        client = TpmClient(socket)
        try:
            return await client.quote(raw_nonce)
        finally:
            await client.close()

    try:
        q = asyncio.run(go())
    except HttpError as e:
        err.print(f"[red]error:[/red] {_e(e.message)}", highlight=False)
        sys.exit(EXIT_FAILED)
    except OSError as e:
        err.print(f"[red]error:[/red] no TPM service at {_e(socket)} ({e.__class__.__name__}); is \\[tpm] configured?")
        sys.exit(EXIT_UNREACHABLE)
    report: dict[str, Any] = {"quote": q.as_dict()}
    try:
        verify_quote(q, raw_nonce, bytes.fromhex(q.pcr_value))
        report["signature_and_nonce"] = "verified"
    except ValueError as e:
        report["signature_and_nonce"] = f"FAILED: {e}"
    home = (state_dir or default_state_dir()) / "audit"
    if (home / "audit.db").exists():
        log = AuditLog(home)
        try:
            started = [r for r in log.records() if r.kind == "edgeward.started" and "pcr_value" in r.detail]
        finally:
            log.close()
        if started:
            last = started[-1]
            report["measured_at_start"] = {"code": last.detail["code"], "config": last.detail["config"],
                                           "pcr_value": last.detail["pcr_value"]}
            report["pcr_matches_last_start"] = last.detail["pcr_value"] == q.pcr_value
    print(json.dumps(report, indent=2))
    if report["signature_and_nonce"] != "verified" or report.get("pcr_matches_last_start") is False:
        sys.exit(EXIT_FAILED)


def _verified_or_exit(settings: DaemonSettings, what: str) -> None:
    """Verify the installed audit log (chain, MACs, TPM counter) or exit 1 saying why ``what`` is not built."""
    from ..attest.audit_open import verify_installed_log  # noqa: PLC0415

    try:
        result = asyncio.run(verify_installed_log(settings))
    except HttpError as e:
        err.print(f"[red]error:[/red] cannot get the audit key or counter to verify the audit log: {_e(e.message)}",
                  highlight=False)
        sys.exit(EXIT_UNREACHABLE)
    except OSError as e:
        err.print(f"[red]error:[/red] cannot reach the keys or TPM service to verify the audit log: {_e(e)}",
                  highlight=False)
        sys.exit(EXIT_UNREACHABLE)
    if result is not None and not result.ok:
        err.print(f"[red]error:[/red] the audit log does not verify ({_e(result.problem)}; the first "
                  f"{_e(result.records)} records check out): {_e(what)} built from it could allow what was never "
                  "measured, so none is; see `edgeward audit verify`", highlight=False)
        sys.exit(EXIT_FAILED)


@attest.command("keylime-policy")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the policy here (default: standard output).")
@config_option
@state_option
@run_option
def attest_keylime_policy(output: Path | None, config: Path | None, state_dir: Path | None,
                          run_dir: Path | None) -> None:
    """Keylime's runtime policy (allow-list JSON) for this device as deployed: Edgeward's code and config as
    measured at its latest start, and each registered module's content id. Enrol the device with it:
    `keylime_tenant -c add -u <uuid> --runtime-policy <file>`."""
    from ..keylime.policy import runtime_policy  # noqa: PLC0415
    from ..runtime.registry import Registry  # noqa: PLC0415

    if output is not None:
        try:  # before any work: a name that will be refused fails at once
            check_output(output)
        except OutputRefused as e:
            err.print(f"[red]error:[/red] {_e(e)}", highlight=False)
            sys.exit(EXIT_FAILED)
    settings = _settings_or_exit(config, state_dir, run_dir)
    home = settings.runtime.audit_home or settings.runtime.home / "audit"
    if not (home / "audit.db").exists():
        err.print(f"[red]error:[/red] no audit log at {_e(home)}: start Edgeward once, so it measures itself")
        sys.exit(EXIT_FAILED)
    _verified_or_exit(settings, "a runtime policy")  # the policy allows what the log says: only a log that checks
    log = AuditLog(home)
    try:
        started = [r for r in log.records() if r.kind == "edgeward.started"]
    finally:
        log.close()
    if not started:
        err.print("[red]error:[/red] the audit log has no start of Edgeward yet: start it once, so it measures itself")
        sys.exit(EXIT_FAILED)
    registry = Registry(settings.runtime.home)
    try:
        policy = runtime_policy(started[-1].detail, registry.all())
    finally:
        registry.close()
    text = json.dumps(policy, indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        try:  # a new file renamed into place: never through a planted symlink nor into someone else's file
            write_output(output, text.encode(), mode=0o644)
        except OutputRefused as e:
            err.print(f"[red]error:[/red] {_e(e)}", highlight=False)
            sys.exit(EXIT_FAILED)
        err.print(f"wrote {_e(output)}: {len(policy['digests'])} allowed names", highlight=False)


@attest.command("keylime-clear-revocation")
@config_option
@state_option
@run_option
def attest_keylime_clear_revocation(config: Path | None, state_dir: Path | None, run_dir: Path | None) -> None:
    """Clear the revocation the Keylime verifier sent (with revocation_action = "stop_modules"): until then no
    module is created or started. Deal with the cause first (the verifier's log says what failed attestation).
    Edgeward records the clearing, with who asked, in the audit log before it lets the next module start."""
    from ..keylime.revoked import RevocationGate  # noqa: PLC0415

    keylime = _keylime_settings_or_exit(config, state_dir, run_dir, "there is no revocation to clear")
    gate = RevocationGate(keylime.state_dir)
    try:
        state = gate.request_clear()
    except (OSError, ValueError) as e:
        err.print(f"[red]error:[/red] cannot clear the revocation under {_e(keylime.state_dir)}: {_e(e)} "
                  "(run as the user Edgeward runs as, usually root)", highlight=False)
        sys.exit(EXIT_FAILED)
    if state is None:
        out.print("no revocation stands: modules may start")
        return
    out.print(f"cleared the revocation of notice {_e(str(state.get('digest'))[:16])}... "
              f"({_e(state.get('event_id'))}): the running Edgeward records it in the audit log and lets the next "
              "module start (a deployment, `edgeward restart <module>`, the edge agent's watchdog)", highlight=False)


@attest.command("keylime-reset-bootstrap")
@config_option
@state_option
@run_option
def attest_keylime_reset_bootstrap(config: Path | None, state_dir: Path | None, run_dir: Path | None) -> None:
    """Let the Keylime agent take a new bootstrap key: the first tenant U and verifier V that combine are pinned,
    and every later /keys/ukey and /keys/vkey is refused (409) until this is run. Run it before
    `keylime_tenant -c update` (or delete and add again), or when someone else's U and V got there first (the
    verifier then reports its V refused). Edgeward records the reset, with who asked, in the audit log."""
    from ..keylime.payloads import request_reset  # noqa: PLC0415

    keylime = _keylime_settings_or_exit(config, state_dir, run_dir, "there is no bootstrap key to reset")
    try:
        pin = request_reset(keylime.state_dir)
    except (OSError, ValueError) as e:
        err.print(f"[red]error:[/red] cannot reset the bootstrap key under {_e(keylime.state_dir)}: "
                  f"{_e(e)} (run as the user Edgeward runs as, usually root)", highlight=False)
        sys.exit(EXIT_FAILED)
    if pin is None:
        out.print("no bootstrap key is pinned: the next tenant's U and verifier's V are taken")
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(pin.get("time") or 0)))
    out.print(f"reset the bootstrap key pinned at {_e(when)}: the running Edgeward records it in the audit log and "
              "takes the next U and V (keylime_tenant -c update -u <uuid> ... --cert <dir>)", highlight=False)
