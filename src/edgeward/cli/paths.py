"""The options by which every command finds a running Edgeward's config, state and sockets."""

from __future__ import annotations

from pathlib import Path

import click

from .dirs import CONFIG_HELP, RUN_HELP, STATE_HELP, default_run_dir, default_state_dir

__all__ = ["config_option", "default_run_dir", "default_state_dir", "run_option", "state_option"]

config_option = click.option("-c", "--config", type=click.Path(path_type=Path), default=None, help=CONFIG_HELP)
state_option = click.option("--state-dir", type=click.Path(path_type=Path), default=None, help=STATE_HELP)
run_option = click.option("--run-dir", type=click.Path(path_type=Path), default=None, help=RUN_HELP)
