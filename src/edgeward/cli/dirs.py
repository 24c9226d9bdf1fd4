"""Where a running Edgeward keeps its state and sockets, and the words for the options that move them: shared by
the click commands (cli/paths.py) and the daemon's own argument parser (cli/daemon_cmds.py), which loads no click."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CONFIG_HELP", "RUN_HELP", "STATE_HELP", "default_run_dir", "default_state_dir"]

CONFIG_HELP = "Config file (TOML). Without it, embedded defaults: software keys."
STATE_HELP = "Where keys and state live [env EDGEWARD_STATE_DIR, default /var/lib/edgeward]."
RUN_HELP = "Where sockets live [env EDGEWARD_RUN_DIR, default /run/edgeward]."


def default_state_dir() -> Path:
    return Path(os.environ.get("EDGEWARD_STATE_DIR", "/var/lib/edgeward"))


def default_run_dir() -> Path:
    return Path(os.environ.get("EDGEWARD_RUN_DIR", "/run/edgeward"))
