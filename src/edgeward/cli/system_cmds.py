"""`edgeward version`, `edgeward system status|reprovision|logs|restart|set-log-level`, `edgeward support-bundle`."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import click
from rich.console import Console

from .. import __version__
from ..http.errors import HttpError
from ..runtime.mgmt_client import ManagementClient
from .output_file import OutputRefused, check_output, write_output
from .paths import default_run_dir, default_state_dir, run_option, state_option
from .redaction import redact
from .status import collect_status, render_status
from .terminal_text import markup_safe

__all__ = ["UNITS", "RestartFailed", "support_bundle", "system", "systemd_running", "try_restart", "version"]

out = Console(emoji=False)
err = Console(stderr=True, emoji=False)
UNITS = ("edgeward-keyd", "edgeward-certd", "edgeward-identityd", "edgeward-tpmd", "edgeward-edged")
# The TPM service runs only where a TPM is configured (`config apply` writes tpmd.toml only then): restarted only
# when it runs, so that `system restart` does not start it on a device without one.
_ONLY_IF_RUNNING = ("edgeward-tpmd",)
LOG_LEVELS = ("error", "warning", "info", "debug")
@click.command()
def version() -> None:
    """Print Edgeward's version."""
    out.print(f"edgeward {__version__}")


@click.group()
def system() -> None:
    """The Edgeward services on this device."""


@system.command("status")
@run_option
@state_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def status(run_dir: Path | None, state_dir: Path | None, as_json: bool) -> None:
    """Modules, identities, certificate expiries and the audit log head (exit 1 if something is wrong)."""
    st = asyncio.run(collect_status(run_dir or default_run_dir(), state_dir or default_state_dir()))
    if as_json:
        print(json.dumps({"modules": st.modules, "identities": st.identities,
                          "certs": [{"id": c, "subject": s, "not_after": n.isoformat() if n else None}
                                    for c, s, n in st.certs],
                          "audit": st.audit, "problems": st.problems}, indent=2, default=str))
    else:
        for item in render_status(st):
            out.print(item)
    if st.problems or (st.audit is not None and not st.audit[0]):
        sys.exit(1)


@system.command("reprovision")
@run_option
def reprovision(run_dir: Path | None) -> None:
    """Provision the device again with the cloud (DPS or the manual settings)."""

    async def go() -> None:
        client = ManagementClient((run_dir or default_run_dir()) / "mgmt" / "mgmt.sock")
        try:
            await client.http.request("POST", "/device/reprovision")
        finally:
            await client.close()

    with out.status("reprovisioning ..."):
        try:
            asyncio.run(go())
        except HttpError as e:
            err.print(f"[red]error:[/red] {markup_safe(e.message)}", highlight=False)
            sys.exit(1)
        except OSError as e:
            err.print(f"[red]error:[/red] Edgeward is not reachable ({markup_safe(e)}); is it running?",
                      highlight=False)
            sys.exit(5)
    out.print("[green]reprovisioned[/green]")


def systemd_running() -> bool:
    return shutil.which("systemctl") is not None and Path("/run/systemd/system").is_dir()


class RestartFailed(Exception):
    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures  # unit -> what systemctl said
        super().__init__("; ".join(f"{unit}: {detail}" for unit, detail in failures.items()))


def try_restart(units: Sequence[str], systemctl: str = "systemctl") -> None:
    """``systemctl try-restart`` each unit, in the order given (a unit that is not running stays stopped; socket
    activation starts it, with its new file, when it is next called); an enabled unit (the module runtime, which
    runs whether or not anyone calls it) is restarted, so the first config applied starts it. Raises RestartFailed
    naming every unit that failed to restart (systemctl waits until each has started again, or failed to)."""
    failures: dict[str, str] = {}
    for unit in units:
        try:
            enabled = subprocess.run([systemctl, "is-enabled", "--quiet", f"{unit}.service"], capture_output=True,
                                     check=False).returncode == 0
            done = subprocess.run([systemctl, "restart" if enabled else "try-restart", f"{unit}.service"],
                                  capture_output=True, text=True, check=False)
        except OSError as e:
            failures[unit] = f"cannot run {systemctl}: {e.strerror or e}"
            continue
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip()
            failures[unit] = said or f"systemctl exited with {done.returncode}"
    if failures:
        raise RestartFailed(failures)


def _restart_all() -> int:
    always = [f"{u}.service" for u in UNITS if u not in _ONLY_IF_RUNNING]
    code = subprocess.call(["systemctl", "restart", *always])
    return code or subprocess.call(["systemctl", "try-restart", *(f"{u}.service" for u in _ONLY_IF_RUNNING)])


@system.command("logs")
@click.option("-f", "--follow", is_flag=True)
@state_option
def logs(follow: bool, state_dir: Path | None) -> None:
    """The services' logs (journald under systemd; the daemon log file of `edgeward run` otherwise)."""
    if systemd_running():
        cmd = ["journalctl", *(a for u in UNITS for a in ("-u", u)), "--no-pager"] + (["-f"] if follow else [])
        sys.exit(subprocess.call(cmd))
    log = (state_dir or default_state_dir()) / "daemon.log"
    if not log.exists():
        err.print(f"no systemd here and no {markup_safe(log)}; `edgeward run` logs to its stderr", highlight=False)
        sys.exit(1)
    sys.exit(subprocess.call(["tail", *(["-f"] if follow else ["-n", "200"]), str(log)]))


@system.command("restart")
def restart() -> None:
    """Restart every Edgeward service (systemd)."""
    if not systemd_running():
        err.print("no systemd here: stop `edgeward run` (Ctrl-C or SIGTERM) and start it again")
        sys.exit(1)
    sys.exit(_restart_all())


@system.command("set-log-level")
@click.argument("level", type=click.Choice(LOG_LEVELS))
def set_log_level(level: str) -> None:
    """Set the services' log level (a systemd drop-in with EDGEWARD_LOG_LEVEL), then restart them."""
    if not systemd_running():
        err.print(f"no systemd here: start Edgeward with EDGEWARD_LOG_LEVEL={level} in its environment")
        sys.exit(1)
    for unit in UNITS:
        dropin = Path(f"/etc/systemd/system/{unit}.service.d")
        dropin.mkdir(parents=True, exist_ok=True)
        (dropin / "log-level.conf").write_text(f"[Service]\nEnvironment=EDGEWARD_LOG_LEVEL={level}\n")
    subprocess.check_call(["systemctl", "daemon-reload"])
    sys.exit(_restart_all())


@click.command("support-bundle")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("support_bundle.zip"),
              show_default=True, help="The zip to write; a file already there is replaced only if it is a regular "
                                      "file of yours (never through a symlink).")
@click.option("--since", default=None,
              help="Only logs since: unix seconds, RFC 3339, or a duration ago (10m, 1d, \"2 days 3 hours\").")
@run_option
@state_option
def support_bundle(output: Path, since: str | None, run_dir: Path | None, state_dir: Path | None) -> None:
    """A zip for support: system info, modules, their recent logs, the status and the audit head — with private
    keys, PINs, passwords, SAS keys and signatures, account keys, tokens and secret Env values redacted. Written
    0600 as a new file: refused if the output name is a symlink, not a regular file, or another user's file."""
    run_dir = run_dir or default_run_dir()

    async def fetch() -> bytes:
        client = ManagementClient(run_dir / "mgmt" / "mgmt.sock")
        try:
            path = "/systeminfo/supportbundle" + (f"?since={quote(since)}" if since else "")
            _, raw = await client.http.request("GET", path)
            return raw
        finally:
            await client.close()

    try:  # before collecting, so a name that will be refused fails at once
        check_output(output)
    except OutputRefused as e:
        err.print(f"[red]error:[/red] {markup_safe(e)}", highlight=False)
        sys.exit(1)
    with out.status("collecting ..."):
        try:
            raw = asyncio.run(fetch())
        except (HttpError, OSError) as e:
            err.print(f"[red]error:[/red] {markup_safe(getattr(e, 'message', e))}", highlight=False)
            sys.exit(1)
        st = asyncio.run(collect_status(run_dir, state_dir or default_state_dir()))
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, redact(src.read(name)))
        dst.writestr("status.json", redact(json.dumps({
            "certs": [{"id": c, "subject": s, "not_after": n.isoformat() if n else None} for c, s, n in st.certs],
            "audit": st.audit, "problems": st.problems}, indent=2, default=str).encode()))
    try:  # a new 0600 file renamed into place (output_file says why): never through a symlink, nor into a
        write_output(output, buf.getvalue(), mode=0o600)  # file planted there that its owner could then read
    except OutputRefused as e:
        err.print(f"[red]error:[/red] {markup_safe(e)}", highlight=False)
        sys.exit(1)
    out.print(f"wrote {markup_safe(output)} ({len(buf.getvalue())} bytes, secrets redacted)", highlight=False)
