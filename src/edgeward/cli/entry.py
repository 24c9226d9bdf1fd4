"""The ``edgeward`` command. The daemon's commands (``run``, ``serve``) start without loading click (see
cli/daemon_cmds.py); every other command, and ``edgeward --help``, goes through the click group."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("run", "serve"):
        from .daemon_cmds import main as daemon_main  # noqa: PLC0415

        daemon_main(sys.argv[1:])
        return
    from .main import main as cli_main  # noqa: PLC0415

    cli_main()
