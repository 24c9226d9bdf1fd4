"""``edgeward``: run the security manager, serve one service, or drive a running one.

Exit codes scripts can rely on: 0 ok, 1 operation failed, 2 usage error, 3 configuration invalid,
4 a backend (HSM, TPM) unavailable.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from .. import __version__
from .daemon_cmds import LOG_FORMAT, RUN_SUMMARY, SERVE_SUMMARY
from .daemon_cmds import main as daemon_main

__all__ = ["main"]


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
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)


# `run` and `serve` are parsed by the daemon's own entry (cli/daemon_cmds.py, no click): here they only pass their
# arguments on, so `edgeward -v run` and a CliRunner invoking the group reach the same code as `edgeward run`.
_PASS_ON = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


@cli.command(context_settings=_PASS_ON, add_help_option=False, help=RUN_SUMMARY)
@click.pass_context
def run(ctx: click.Context) -> None:
    daemon_main(["run", *ctx.args])


@cli.command("serve", context_settings=_PASS_ON, add_help_option=False, help=SERVE_SUMMARY)
@click.pass_context
def serve_one(ctx: click.Context) -> None:
    daemon_main(["serve", *ctx.args])


def main() -> None:
    cli()
