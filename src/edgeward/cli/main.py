"""``edgeward``: run the security manager, serve one service, or drive a running one.

Exit codes scripts can rely on: 0 ok, 1 operation failed, 2 usage error, 3 configuration invalid,
4 a backend (HSM, TPM) unavailable.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from .. import __version__
from ..config.problems import ConfigError
from ..daemon import (
    ALL_SERVICES,
    KEYLIME_SERVICES,
    ServiceSettings,
    load_service_settings,
    load_settings,
    load_super_service_settings,
    serve,
)
from ..fdlimit import raise_fd_limit
from ..http.errors import HttpError
from ..keys.errors import BackendUnavailable
from .paths import config_option, run_option, state_option
from .paths import default_run_dir as _default_run_dir
from .paths import default_state_dir as _default_state_dir

__all__ = ["main"]

EXIT_FAILED, EXIT_CONFIG, EXIT_BACKEND = 1, 3, 4


def _say(kind: str, text: object) -> None:
    """An error or a warning on stderr, colored on a terminal. click rather than rich: this module is the daemon's
    entry point too, and rich's console would add to every service's start-up time and memory."""
    click.echo(f"{click.style(f'{kind}:', fg='red' if kind == 'error' else 'yellow')} {text}", err=True)


# The other commands, imported when invoked (or listed by --help): `serve keys` should not pay for the container
# engine client, the status renderer and every other service before its socket answers.
_LAZY = {
    "demo": ("demo", "demo"), "list": ("runtime_cmds", "list_modules"), "logs": ("runtime_cmds", "logs"),
    "restart": ("runtime_cmds", "restart"), "audit": ("runtime_cmds", "audit"), "attest": ("runtime_cmds", "attest"),
    "system": ("system_cmds", "system"), "support-bundle": ("system_cmds", "support_bundle"),
    "version": ("system_cmds", "version"), "check": ("check", "check"), "init": ("init_cmd", "init"),
    "config": ("config_cmds", "config"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY and cmd_name not in self.commands:
            module, attr = _LAZY[cmd_name]
            command = getattr(importlib.import_module(f"{__package__}.{module}"), attr)
            assert isinstance(command, click.Command)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeward")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Edgeward, the security manager of an IoT edge device."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _run_services(load: Callable[[], ServiceSettings], services: tuple[str, ...]) -> None:
    try:
        settings = load()
    except ConfigError as e:
        _say("error", e)
        sys.exit(EXIT_CONFIG)
    for warning in settings.warnings:
        _say("warning", warning)
    wanted = os.environ.get("EDGEWARD_LOG_LEVEL", "info").upper()  # set by `edgeward system set-log-level`
    level = logging.getLevelName(wanted) if wanted in ("ERROR", "WARNING", "INFO", "DEBUG") else logging.INFO
    logging.getLogger().setLevel(min(logging.getLogger().level, level))
    raise_fd_limit()  # before any listener sizes its caps by it (see edgeward.fdlimit)
    try:
        asyncio.run(serve(settings, services))
    except ConfigError as e:  # found only at start (e.g. EDGEWARD_HTTP_* limits, a TPM that does not answer)
        _say("error", e)
        sys.exit(EXIT_CONFIG)
    except BackendUnavailable as e:
        _say("error", e.message)
        sys.exit(EXIT_BACKEND)
    except HttpError as e:  # a service this one needs at start refused it or failed (its socket, its policy)
        _say("error", f"a service refused the start: {e.message}")
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        pass


@cli.command()
@config_option
@state_option
@run_option
def run(config: Path | None, state_dir: Path | None, run_dir: Path | None) -> None:
    """Run every service in this process (the embedded composition)."""
    _run_services(lambda: load_settings(config, state_dir or _default_state_dir(), run_dir or _default_run_dir()),
                  ALL_SERVICES)


@cli.command("serve")
@click.argument("service", type=click.Choice([*ALL_SERVICES, "keylime-agent"]))
@config_option
@click.option("--config-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Read only this service's own file in this directory (keyd.toml, certd.toml, identityd.toml, "
                   "tpmd.toml or edged.toml, as `edgeward config apply` writes them); instead of -c.")
@state_option
@run_option
def serve_one(service: str, config: Path | None, config_dir: Path | None, state_dir: Path | None,
              run_dir: Path | None) -> None:
    """Run one service per process, as systemd units with socket activation do: from the super config (-c), or,
    as the packaged deployment runs them (one user per service), from its own file only (--config-dir).
    `keylime-agent` runs the TPM service and the module runtime with it (it quotes under the one and measures what
    the other records)."""
    state, run = state_dir or _default_state_dir(), run_dir or _default_run_dir()
    if service == "keylime-agent":
        if config_dir is not None:
            raise click.UsageError("serve keylime-agent reads the super config (-c): it runs the TPM service and "
                                   "the module runtime, whose files are readable by different users")
        _run_services(lambda: load_settings(config, state, run), KEYLIME_SERVICES)
        return
    if config is not None and config_dir is not None:
        raise click.UsageError("-c/--config and --config-dir are mutually exclusive: the super config, or the "
                               "directory of per-service files `edgeward config apply` writes")
    if config_dir is not None:
        _run_services(lambda: load_service_settings(service, config_dir, state, run), (service,))
    else:
        _run_services(lambda: load_super_service_settings(service, config, state, run), (service,))


def main() -> None:
    cli()
