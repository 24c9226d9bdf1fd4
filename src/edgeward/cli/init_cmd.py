"""`edgeward init`: write a first configuration, by questions or `--quickstart`, and check it parses."""

from __future__ import annotations

import socket
import sys
import tempfile
from pathlib import Path

import click
from rich.console import Console

from ..config.problems import ConfigError
from ..daemon import load_settings
from ..identity.connection_string import parse_connection_string
from .output_file import OutputRefused, check_output, write_output
from .terminal_text import markup_safe

__all__ = ["init"]

out = Console(emoji=False)


def _e(value: object) -> str:
    """Operator text (config values, paths, messages quoting them) printed as it is, never read as rich markup nor
    obeyed as terminal escapes (a message may list problems on several lines)."""
    return markup_safe(value, lines=True)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(hostname: str, engine: str, docker_uri: str, provisioning: dict[str, str]) -> str:
    lines = ["# Edgeward configuration, written by `edgeward init`. The IoT Edge 1.5 super config format.",
             f"hostname = {_toml_str(hostname)}", ""]
    if provisioning.get("source") == "manual":
        lines += ["[provisioning]", 'source = "manual"',
                  f"connection_string = {_toml_str(provisioning['connection_string'])}", ""]
    elif provisioning.get("source") == "dps":
        lines += ["[provisioning]", 'source = "dps"', 'global_endpoint = "https://global.azure-devices-provisioning.net"',
                  f"id_scope = {_toml_str(provisioning['id_scope'])}", "", "[provisioning.attestation]",
                  'method = "symmetric_key"', f"registration_id = {_toml_str(provisioning['registration_id'])}",
                  f"symmetric_key = {{ value = {_toml_str(provisioning['symmetric_key'])} }}", ""]
    else:
        lines += ["# No [provisioning]: no cloud identity. Module identities are minted on the device.", ""]
    lines += ["[localid]", 'domain_name = "edgeward.local"', ""]
    if engine == "docker":
        lines += ["[moby_runtime]", f"uri = {_toml_str(docker_uri)}", ""]
    else:
        lines += ["[edgeward.runtime]", 'engine = "process"   # modules are supervised host processes', ""]
    lines += ["# The edge CA: the quickstart CA (self-signed, renewed with a new key at 80% of its life).",
              "[edge_ca]", "auto_generated_edge_ca_expiry_days = 90", "",
              "[edgeward.integrity]", 'policy = "refuse"', ""]
    return "\n".join(lines)


def _docker_reachable(uri: str) -> bool:
    path = uri.removeprefix("unix://")
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            s.connect(path)
        return True
    except OSError:
        return False


@click.command()
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("/etc/edgeward/config.toml"),
              show_default=True)
@click.option("--quickstart", is_flag=True, help="No questions: no cloud, the engine found on this device.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(output: Path, quickstart: bool, force: bool) -> None:
    """Write a first configuration (by questions, or --quickstart), checked before it is saved."""
    if output.exists() and not force:
        out.print(f"[red]error:[/red] {_e(output)} exists; use --force to replace it")
        sys.exit(1)
    try:  # before the questions: a name that will be refused fails at once
        check_output(output)
    except OutputRefused as e:
        out.print(f"[red]error:[/red] {_e(e)}")
        sys.exit(1)
    docker_uri = "unix:///var/run/docker.sock"
    engine = "docker" if _docker_reachable(docker_uri) else "process"
    hostname = socket.gethostname()
    provisioning: dict[str, str] = {}
    if not quickstart:
        hostname = click.prompt("Device hostname", default=hostname)
        engine = click.prompt("Module engine", type=click.Choice(["docker", "process"]), default=engine)
        if engine == "docker":
            docker_uri = click.prompt("Container engine socket", default=docker_uri)
        source = click.prompt("Cloud provisioning", type=click.Choice(["none", "manual", "dps"]), default="none")
        if source == "manual":
            while True:
                value = click.prompt("Device connection string", hide_input=True)
                try:
                    parse_connection_string(value)
                    break
                except ValueError as e:
                    out.print(f"[red]{_e(e)}[/red]")
            provisioning = {"source": "manual", "connection_string": value}
        elif source == "dps":
            provisioning = {"source": "dps", "id_scope": click.prompt("DPS ID scope"),
                            "registration_id": click.prompt("Registration id", default=hostname),
                            "symmetric_key": click.prompt("Symmetric key (base64)", hide_input=True)}
    text = render(hostname, engine, docker_uri, provisioning)
    with tempfile.TemporaryDirectory() as d:
        candidate = Path(d) / "config.toml"
        candidate.write_text(text)
        try:
            settings = load_settings(candidate, Path(d) / "state", Path(d) / "run")
        except ConfigError as e:
            out.print(f"[red]the configuration would not be valid:[/red] {_e(e)}")
            sys.exit(3)
    try:  # 0600, it may hold a connection string; a new file renamed into place (output_file says why)
        output.parent.mkdir(parents=True, exist_ok=True)
        write_output(output, text.encode(), mode=0o600)
    except (OutputRefused, OSError) as e:
        out.print(f"[red]error:[/red] {_e(e)}")
        sys.exit(1)
    for warning in settings.warnings:
        out.print(f"[yellow]warning:[/yellow] {_e(warning)}")
    out.print(f"[green]wrote {_e(output)}[/green] ({_e(engine)} engine, "
              f"{provisioning.get('source', 'no cloud')} provisioning). Next: edgeward run -c {_e(output)}")
