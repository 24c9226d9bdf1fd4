"""The ``edgeward`` command. The daemon's commands (``run``, ``serve``) start without loading click (see
cli/daemon_cmds.py) and without the system CA bundle aiohttp's import loads (cli/lean_aiohttp.py); every other
command, and ``edgeward --help``, goes through the click group."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    # The group's own options take no value, so the first word that is not an option names the command: the daemon
    # started as `edgeward -v run` (through the click group) gets the same aiohttp as `edgeward run`.
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    if command in ("run", "serve"):
        from .lean_aiohttp import import_aiohttp_without_default_trust  # noqa: PLC0415

        import_aiohttp_without_default_trust()  # before anything else imports aiohttp (see lean_aiohttp.py)
    if len(sys.argv) > 1 and sys.argv[1] in ("run", "serve"):
        from .daemon_cmds import main as daemon_main  # noqa: PLC0415

        daemon_main(sys.argv[1:])
        return
    from .main import main as cli_main  # noqa: PLC0415

    cli_main()
