"""``edgeward config apply|import|mp``: check the super config and split it into per-service files, convert an
IoT Edge 1.1 config.yaml, write a manual-provisioning config.

Exit codes as everywhere in the CLI: 0 ok, 1 operation failed (a file could not be written, or exists), 3 the
configuration is invalid (every problem listed).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ..config.apply_files import FileResult, file_owners, planned, units_to_restart, write_service_files
from ..config.import_v1 import import_v1_config, old_master_encryption_key
from ..config.mp import manual_provisioning_config
from ..config.problems import ConfigError, Problems
from ..config.super_config import ServiceConfigs, split_super_config
from ..config.toml_write import TomlWriteError
from ..daemon import load_settings, read_config
from .output_file import OutputRefused, check_output, write_output
from .paths import default_run_dir, default_state_dir
from .system_cmds import RestartFailed, systemd_running, try_restart
from .terminal_text import cell, markup_safe

__all__ = ["config"]

EXIT_FAILED, EXIT_CONFIG = 1, 3
DEFAULT_CONFIG = Path("/etc/aziot/config.toml")
DEFAULT_OUT_DIR = Path("/etc/edgeward")
DEFAULT_V1_CONFIG = Path("/etc/iotedge/config.yaml")

out = Console(emoji=False)
err = Console(stderr=True, emoji=False)


def _e(value: object) -> str:
    """Operator text (config values, paths, messages quoting them) printed as it is, never read as rich markup nor
    obeyed as terminal escapes (a message may list problems on several lines)."""
    return markup_safe(value, lines=True)


def _fail(e: ConfigError) -> None:
    err.print(f"[red]error:[/red] {_e(e)}", highlight=False)
    sys.exit(EXIT_CONFIG)


def _warn(warnings: list[str] | tuple[str, ...]) -> None:
    for warning in dict.fromkeys(warnings):
        err.print(f"[yellow]warning:[/yellow] {_e(warning)}", highlight=False)


def _describe(name: str, doc: dict[str, Any]) -> str:
    """What a per-service file holds, in a line: its tables, with counts for the collections."""
    parts = []
    inner = doc.get("tpm", {}) if name == "tpmd.toml" else doc
    for key, value in inner.items():
        if key == "provisioning" and isinstance(value, dict):
            att = value.get("attestation") or value.get("authentication") or {}
            method = att.get("method") if isinstance(att, dict) else None
            parts.append(f"provisioning ({value.get('source')}{', ' + str(method) if method else ''})")
        elif key in ("preloaded_keys", "preloaded_certs", "cert_issuance", "principal") and value:
            parts.append(f"{key} ({len(value)})")
        elif key == "edgeward" and isinstance(value, dict):
            parts.append(", ".join(f"edgeward.{k}" for k in value))
        else:
            parts.append(key)
    return ", ".join(parts) or "(defaults)"


@click.group("config")
def config() -> None:
    """Check and split the configuration (IoT Edge 1.5's config.toml), import 1.1's config.yaml."""


@config.command("apply")
@click.option("-c", "--config", "config_path", type=click.Path(path_type=Path), default=DEFAULT_CONFIG,
              show_default=True, help="The super config (IoT Edge 1.5 config.toml format).")
@click.option("--out-dir", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_OUT_DIR,
              show_default=True, help="Where the per-service files go.")
@click.option("--dry-run", is_flag=True, help="Check and show what would change; write nothing.")
@click.option("--no-restart", is_flag=True, help="Do not restart the services whose file changed (systemd).")
def apply(config_path: Path, out_dir: Path, dry_run: bool, no_restart: bool) -> None:
    """Check the config (every problem at once) and write one file per service: keyd.toml, certd.toml,
    identityd.toml, tpmd.toml (with a TPM), edged.toml; each readable by its service's user only (aziotks,
    aziotcs, aziotid, aziottpm when they exist and this runs as root; edged.toml root's), mode 0600, replaced
    atomically, and only when its content changed. Under systemd, the units whose file changed are restarted
    (`systemctl try-restart`: a stopped unit stays stopped; socket activation starts it with its new file)."""
    try:
        # exactly what `edgeward run -c` checks, so a config that applies also runs
        settings = load_settings(config_path, default_state_dir(), default_run_dir())
    except ConfigError as e:
        _fail(e)
        return
    split: ServiceConfigs = split_super_config(read_config(config_path), Problems(str(config_path)),
                                               config_files=(config_path.resolve(), out_dir.resolve()))
    try:
        texts = split.render(config_path.name)
    except TomlWriteError as e:
        _fail(ConfigError([str(e)], str(config_path)))
        return
    _warn(settings.warnings)
    try:
        results = planned(texts, out_dir) if dry_run else write_service_files(texts, out_dir, file_owners())
    except OSError as e:
        err.print(f"[red]error:[/red] cannot write to {_e(out_dir)}: {_e(e.strerror or e)}", highlight=False)
        sys.exit(EXIT_FAILED)
    _report(results, split.files(), out_dir, dry_run)
    units = units_to_restart(results)
    if dry_run or not units:
        return
    if no_restart or not systemd_running():
        why = "--no-restart" if no_restart else "no systemd here"
        out.print(f"not restarted ({why}): {', '.join(units)} read their new file when they start again")
        return
    try:
        try_restart(units)
    except RestartFailed as e:
        for unit, detail in e.failures.items():
            err.print(f"[red]error:[/red] {unit} did not restart with its new file: {_e(detail)}", highlight=False)
        sys.exit(EXIT_FAILED)
    out.print(f"restarted (if running): {', '.join(units)}")


def _report(results: list[FileResult], docs: dict[str, dict[str, Any]], out_dir: Path, dry_run: bool) -> None:
    changed = sum(r.change != "unchanged" for r in results)
    title = (f"would write {len(docs)} files to {out_dir}: {changed} new, changed or removed" if dry_run
             else f"{len(docs)} files in {out_dir}: {changed} new, changed or removed")
    table = Table(title=_e(title))
    table.add_column("file")
    table.add_column("change")
    table.add_column("holds")
    for r in results:
        change = r.change + (" (owner/mode put right)" if r.fixed else "")
        if r.owner is not None:
            change += f" (owner uid {r.owner[0]})"
        table.add_row(cell(r.name), cell(change), cell(_describe(r.name, docs[r.name]) if r.name in docs else ""))
    out.print(table)


@config.command("import")
@click.option("-i", "--in-file", type=click.Path(path_type=Path, dir_okay=False), default=DEFAULT_V1_CONFIG,
              show_default=True, help="IoT Edge 1.1's config.yaml.")
@click.option("-o", "--out-file", type=click.Path(path_type=Path, dir_okay=False), default=DEFAULT_CONFIG,
              show_default=True, help="The 1.5 super config to write.")
@click.option("--force", is_flag=True, help="Overwrite --out-file if it exists.")
def import_cmd(in_file: Path, out_file: Path, force: bool) -> None:
    """Convert an IoT Edge 1.1 config.yaml to the 1.5 config.toml, listing what could not be converted."""
    _check_out_file(out_file, force)
    try:
        text = in_file.read_text()
    except OSError as e:
        err.print(f"[red]error:[/red] cannot read {_e(in_file)}: {_e(e.strerror or e)}", highlight=False)
        sys.exit(EXIT_FAILED)
    try:
        result = import_v1_config(text, str(in_file), old_master_encryption_key())
        converted = result.toml(in_file.name)
        problems = Problems(str(out_file))
        split_super_config(tomllib.loads(converted), problems)  # what we write must itself be valid
        problems.raise_if_any()
    except ConfigError as e:
        _fail(e)
        return
    _write_out_file(out_file, converted)
    out.print(f"wrote {_e(out_file)}")
    for item in result.not_converted:
        err.print(f"[yellow]not converted:[/yellow] {_e(item)}", highlight=False)
    out.print(f"next: edgeward config apply -c {_e(out_file)}")


def _check_out_file(out_file: Path, force: bool) -> None:
    """Exit 1 unless ``out_file`` may be written: absent, or (with ``force``) a regular file of this user's."""
    if out_file.exists() and not force:
        err.print(f"[red]error:[/red] {_e(out_file)} exists; pass --force to overwrite it", highlight=False)
        sys.exit(EXIT_FAILED)
    try:
        check_output(out_file)
    except OutputRefused as e:
        err.print(f"[red]error:[/red] {_e(e)}", highlight=False)
        sys.exit(EXIT_FAILED)


def _write_out_file(out_file: Path, text: str) -> None:
    """``text`` as a new 0600 file (it may hold a key) renamed to ``out_file`` (output_file says why)."""
    try:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        write_output(out_file, text.encode(), mode=0o600)
    except (OutputRefused, OSError) as e:
        err.print(f"[red]error:[/red] cannot write {_e(out_file)}: {_e(getattr(e, 'strerror', None) or e)}",
                  highlight=False)
        sys.exit(EXIT_FAILED)


def _connection_string(given: str | None, from_file: Path | None) -> str:
    """The connection string from a file, standard input (``-``), a hidden prompt (neither given, on a terminal)
    or, as IoT Edge's `iotedge config mp` takes it, the command line: there it is in this process's argv, which
    every local user can read (/proc/<pid>/cmdline) while the command runs, so that way warns."""
    if given is not None and from_file is not None:
        err.print("[red]error:[/red] give --connection-string or --connection-string-file, not both", highlight=False)
        sys.exit(2)
    if from_file is not None:
        try:
            return (sys.stdin.read() if str(from_file) == "-" else from_file.read_text()).strip()
        except (OSError, UnicodeDecodeError) as e:
            err.print(f"[red]error:[/red] cannot read {_e(from_file)}: {_e(getattr(e, 'strerror', None) or e)}",
                      highlight=False)
            sys.exit(EXIT_FAILED)
    if given == "-":
        if sys.stdin.isatty():
            return str(click.prompt("Device connection string", hide_input=True, err=True)).strip()
        return sys.stdin.read().strip()
    if given is None:
        if not sys.stdin.isatty():
            err.print("[red]error:[/red] no connection string: give --connection-string-file FILE, or "
                      "--connection-string - with it on standard input", highlight=False)
            sys.exit(2)
        return str(click.prompt("Device connection string", hide_input=True, err=True)).strip()
    err.print("[yellow]warning:[/yellow] the connection string (with the device key) was on the command line, "
              "which every local user can read while the command runs (/proc/<pid>/cmdline) and which shell history "
              "may keep: prefer --connection-string-file FILE or --connection-string - (standard input)",
              highlight=False)
    return given


@config.command("mp")
@click.option("-c", "--connection-string", default=None, metavar="STRING|-",
              help="The device's IoT Hub connection string; '-' reads it from standard input (or asks for it on "
                   "a terminal). On the command line it is readable by every local user while the command runs "
                   "(/proc/<pid>/cmdline): prefer '-' or --connection-string-file.")
@click.option("--connection-string-file", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
              default=None, help="Read the connection string from this file ('-': standard input).")
@click.option("-o", "--out-file", type=click.Path(path_type=Path, dir_okay=False), default=DEFAULT_CONFIG,
              show_default=True, help="The config to write.")
@click.option("--force", is_flag=True, help="Overwrite --out-file if it exists.")
def mp(connection_string: str | None, connection_string_file: Path | None, out_file: Path, force: bool) -> None:
    """Write a config that provisions this device manually, by connection string (from a file, standard input, a
    prompt, or the command line). Without either option, on a terminal, it is asked for without echo."""
    try:
        text = manual_provisioning_config(_connection_string(connection_string, connection_string_file))
    except ConfigError as e:
        _fail(e)
        return
    _check_out_file(out_file, force)
    _write_out_file(out_file, text)  # it holds the device key
    out.print(f"wrote {_e(out_file)}; next: edgeward config apply -c {_e(out_file)}")
