"""Where a running Edgeward keeps its state and sockets, as every command finds them."""

from __future__ import annotations

import os
from pathlib import Path

import click

__all__ = ["config_option", "default_run_dir", "default_state_dir", "run_option", "state_option"]


def default_state_dir() -> Path:
    return Path(os.environ.get("EDGEWARD_STATE_DIR", "/var/lib/edgeward"))


def default_run_dir() -> Path:
    return Path(os.environ.get("EDGEWARD_RUN_DIR", "/run/edgeward"))


config_option = click.option("-c", "--config", type=click.Path(path_type=Path), default=None,
                             help="Config file (TOML). Without it, embedded defaults: software keys.")
state_option = click.option("--state-dir", type=click.Path(path_type=Path), default=None,
                            help="Where keys and state live [env EDGEWARD_STATE_DIR, default /var/lib/edgeward].")
run_option = click.option("--run-dir", type=click.Path(path_type=Path), default=None,
                          help="Where sockets live [env EDGEWARD_RUN_DIR, default /run/edgeward].")
