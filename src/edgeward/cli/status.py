"""The status of a running Edgeward, gathered over its sockets: modules, identities, certificates, audit head."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from rich.table import Table
from rich.text import Text

from ..attest.audit import AuditLog
from ..attest.audit_open import verify_installed_log
from ..attest.monitor import unresolved_monitor_errors
from ..certs.client import CertsClient
from ..daemon import DaemonSettings, load_settings
from ..http.errors import HttpError
from ..runtime.edge_ca import EDGE_CA_CERT_ID
from ..runtime.mgmt_client import ManagementClient
from .terminal_text import cell

__all__ = ["Status", "collect_status", "render_status"]

WATCHED_CERTS = (EDGE_CA_CERT_ID, "edgeward-local-ca", "edgeward-device-server")


@dataclass
class Status:
    modules: list[dict[str, Any]] = field(default_factory=list)
    identities: list[dict[str, Any]] = field(default_factory=list)
    certs: list[tuple[str, str, dt.datetime | None]] = field(default_factory=list)  # id, subject, not after
    audit: tuple[bool, int, str, str | None] | None = None  # ok, records, head, problem
    problems: list[str] = field(default_factory=list)


async def collect_status(run_dir: Path, state_dir: Path, extra_certs: tuple[str, ...] = ()) -> Status:
    status = Status()
    mgmt = ManagementClient(run_dir / "mgmt" / "mgmt.sock")
    try:
        status.modules = await mgmt.list_modules()
        status.identities = await mgmt.identities()
    except (HttpError, OSError) as e:
        status.problems.append(f"management API: {getattr(e, 'message', e)}")
    finally:
        await mgmt.close()
    certs = CertsClient(run_dir / "certd.sock")
    try:
        for cert_id in (*WATCHED_CERTS, *extra_certs):
            try:
                leaf = x509.load_pem_x509_certificates((await certs.get_cert(cert_id)).encode())[0]
                status.certs.append((cert_id, leaf.subject.rfc4514_string(), leaf.not_valid_after_utc))
            except HttpError:
                status.certs.append((cert_id, "(not issued)", None))
    except OSError as e:
        status.problems.append(f"certificates service: {e}")
    finally:
        await certs.close()
    try:  # with the audit key and TPM counter, over their sockets (or opened here when they are not running)
        result = await verify_installed_log(load_settings(None, state_dir, run_dir))
    except (HttpError, OSError) as e:
        status.problems.append(f"audit log: cannot get its key or counter: {getattr(e, 'message', e)}")
    else:
        if result is not None:
            status.audit = (result.ok, result.records, result.head, result.problem)
    status.problems.extend(_monitor_problems(load_settings(None, state_dir, run_dir)))
    return status


def _monitor_problems(settings: DaemonSettings) -> list[str]:
    """The integrity monitor's failures to measure, as the audit log has them: not findings, but a module whose
    code has not been checked for a while must not look like one that has."""
    home = settings.runtime.audit_home or settings.state_dir / "audit"
    if not (home / "audit.db").exists():
        return []
    log = AuditLog(home)
    try:
        unresolved = unresolved_monitor_errors(log.records())
    finally:
        log.close()
    return [f"integrity monitor: cannot measure {module or 'any module'} since "
            f"{dt.datetime.fromtimestamp(float(d.get('since', 0)), dt.UTC):%Y-%m-%d %H:%M:%S} UTC "
            f"({d.get('attempts')} attempts{', persistent' if d.get('persistent') else ''}): {d.get('error')}"
            for module, d in unresolved.items()]


def _left(when: dt.datetime | None) -> Text:
    if when is None:
        return Text("-")
    left = when - dt.datetime.now(dt.UTC)
    color = "red" if left < dt.timedelta(days=1) else "yellow" if left < dt.timedelta(days=7) else "green"
    days = left.total_seconds() / 86400
    return Text(f"{when:%Y-%m-%d %H:%M} ({days:.1f} days)", style=color)


def render_status(status: Status) -> list[Table | Text]:
    """Tables and lines for the terminal. Every value from the daemon, a module (its name, image path), a
    certificate or the audit log is a plain cell: shown, never read as markup nor obeyed as escape sequences
    (terminal_text says why)."""
    out: list[Table | Text] = []
    modules = Table(title="modules")
    for col in ("module", "status", "image / executable", "measured", "generation"):
        modules.add_column(col)
    generations = {i["moduleId"]: i["generationId"] for i in status.identities}
    for m in status.modules:
        state = m["status"]["runtimeStatus"]["status"]
        color = {"running": "green", "failed": "red"}.get(state, "yellow")
        settings = m["config"]["settings"]
        modules.add_row(cell(m["name"]), cell(state, color), cell(settings["image"]),
                        cell(str(settings.get("imageHash", ""))[:19]), cell(str(generations.get(m["name"], "-"))[:12]))
    out.append(modules)
    certs = Table(title="certificates")
    for col in ("cert id", "subject", "expires"):
        certs.add_column(col)
    for cert_id, subject, not_after in status.certs:
        certs.add_row(cell(cert_id), cell(subject), _left(not_after))
    out.append(certs)
    if status.audit is not None:
        ok, records, head, problem = status.audit
        verdict = Text("intact", style="green") if ok else Text.assemble(("TAMPERED", "red"), ": ", cell(problem))
        out.append(Text.assemble("audit log: ", verdict, f", {records} records, head ", cell(str(head)[:16])))
    out.extend(Text.assemble(("problem:", "red"), " ", cell(p)) for p in status.problems)
    return out
