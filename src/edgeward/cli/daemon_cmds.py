"""``edgeward run`` and ``edgeward serve <service>``: the daemon's own entry, parsed with the standard library's
argparse (which aiohttp loads anyway) instead of click. Every service process starts through here, on devices where
start-up time and memory count: click is about 0.9 MB of code and 15-20 ms of start that a daemon never needs. The
click group (cli/main.py) hands both commands to :func:`main`, so ``edgeward -v run`` and ``edgeward run --help``
work as before.

Exit codes as cli/main.py documents them: 0 ok, 1 operation failed, 2 usage error, 3 configuration invalid,
4 a backend (HSM, TPM) unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..childwatch import use_pidfd_child_watcher
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
from ..dirtrust import make_trusted_dir, untrusted_dir, untrusted_file
from ..fdlimit import raise_fd_limit
from ..http.errors import HttpError
from ..keys.errors import BackendUnavailable
from .dirs import CONFIG_HELP, RUN_HELP, STATE_HELP, default_run_dir, default_state_dir

__all__ = ["LOG_FORMAT", "RUN_SUMMARY", "SERVE_SUMMARY", "main", "say"]

EXIT_FAILED, EXIT_CONFIG, EXIT_BACKEND = 1, 3, 4
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
RUN_SUMMARY = "Run every service in this process (the embedded composition)."
SERVE_SUMMARY = "Run one service per process, as systemd units with socket activation do."
_SERVE_DESCRIPTION = (
    f"{SERVE_SUMMARY} From the super config (-c) or, as the packaged deployment runs them (one user per service), "
    "from the service's own file only (--config-dir). `keylime-agent` runs the TPM service and the module runtime "
    "with it (it quotes under the one and measures what the other records).")


def say(kind: str, text: object) -> None:
    """An error or a warning on stderr, its label colored on a terminal."""
    label = f"{kind}:"
    if sys.stderr.isatty() and "NO_COLOR" not in os.environ:
        label = f"\x1b[{31 if kind == 'error' else 33}m{label}\x1b[0m"
    print(f"{label} {text}", file=sys.stderr)


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, and its subcommands' (whose usage a refusal of their options shows)."""
    parser = argparse.ArgumentParser(prog="edgeward", allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,serve}")

    def paths(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("-c", "--config", type=Path, default=None, help=CONFIG_HELP)
        sub.add_argument("--state-dir", type=Path, default=None, help=STATE_HELP)
        sub.add_argument("--run-dir", type=Path, default=None, help=RUN_HELP)

    run = commands.add_parser("run", help=RUN_SUMMARY, description=RUN_SUMMARY, allow_abbrev=False)
    paths(run)
    serve_one = commands.add_parser("serve", help=SERVE_SUMMARY, description=_SERVE_DESCRIPTION, allow_abbrev=False)
    serve_one.add_argument("service", choices=[*ALL_SERVICES, "keylime-agent"])
    paths(serve_one)
    serve_one.add_argument("--config-dir", type=Path, default=None,
                           help="Read only this service's own file in this directory (keyd.toml, certd.toml, "
                                "identityd.toml, tpmd.toml or edged.toml, as `edgeward config apply` writes them); "
                                "instead of -c.")
    return parser, {"run": run, "serve": serve_one}


def main(argv: Sequence[str]) -> None:
    """Parse ``run ...`` or ``serve ...`` and run it until a stop signal."""
    parser, commands = _parsers()
    args, unknown = parser.parse_known_args(list(argv))
    if unknown:  # refused with the usage of the command it was given to, not the top level's
        commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    serve_parser = commands["serve"]
    state = args.state_dir or default_state_dir()
    run = args.run_dir or default_run_dir()
    config: Path | None = args.config
    if args.command == "run":
        _refuse_untrusted(state, run, config, None)
        _run_services(lambda: load_settings(config, state, run), ALL_SERVICES)
        return
    service: str = args.service
    config_dir: Path | None = args.config_dir
    if service == "keylime-agent":
        if config_dir is not None:
            serve_parser.error("serve keylime-agent reads the super config (-c): it runs the TPM service and the "
                               "module runtime, whose files are readable by different users")
        _refuse_untrusted(state, run, config, None)
        _run_services(lambda: load_settings(config, state, run), KEYLIME_SERVICES)
    elif config is not None and config_dir is not None:
        serve_parser.error("-c/--config and --config-dir are mutually exclusive: the super config, or the directory "
                           "of per-service files `edgeward config apply` writes")
    elif config_dir is not None:
        if config_dir.exists() and not config_dir.is_dir():
            serve_parser.error(f"--config-dir {config_dir}: not a directory")
        _refuse_untrusted(state, run, None, config_dir)
        _run_services(lambda: load_service_settings(service, config_dir, state, run), (service,))
    else:
        _refuse_untrusted(state, run, config, None)
        _run_services(lambda: load_super_service_settings(service, config, state, run), (service,))


def _refuse_untrusted(state: Path, run: Path, config: Path | None, config_dir: Path | None) -> None:
    """Exit unless the state and run directories (made now where missing) and the config are Edgeward's alone:
    checked after the usage, before anything is read from or written to them."""
    for flag, path in (("--state-dir", state), ("--run-dir", run)):
        problem = make_trusted_dir(path)
        if problem is not None:
            say("error", f"{flag} {path}: {problem}; whoever can rename it can replace Edgeward's keys or sockets")
            sys.exit(EXIT_CONFIG)
    for flag, given, untrusted in (("-c", config, untrusted_file), ("--config-dir", config_dir, untrusted_dir)):
        problem = untrusted(given) if given is not None else None
        if problem is not None:
            say("error", f"{flag} {given}: {problem}; whoever can write it decides what Edgeward allows")
            sys.exit(EXIT_CONFIG)


def _run_services(load: Callable[[], ServiceSettings], services: tuple[str, ...]) -> None:
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr)  # unless `edgeward -v` did
    try:
        settings = load()
    except ConfigError as e:
        say("error", e)
        sys.exit(EXIT_CONFIG)
    for warning in settings.warnings:
        say("warning", warning)
    wanted = os.environ.get("EDGEWARD_LOG_LEVEL", "info").upper()  # set by `edgeward system set-log-level`
    level = logging.getLevelName(wanted) if wanted in ("ERROR", "WARNING", "INFO", "DEBUG") else logging.INFO
    logging.getLogger().setLevel(min(logging.getLogger().level, level))
    raise_fd_limit()  # before any listener sizes its caps by it (see edgeward.fdlimit)
    try:
        asyncio.run(_serve_process(settings, services))
    except ConfigError as e:  # found only at start (e.g. EDGEWARD_HTTP_* limits, a TPM that does not answer)
        say("error", e)
        sys.exit(EXIT_CONFIG)
    except BackendUnavailable as e:
        say("error", e.message)
        sys.exit(EXIT_BACKEND)
    except HttpError as e:  # a service this one needs at start refused it or failed (its socket, its policy)
        say("error", f"a service refused the start: {e.message}")
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        pass


async def _serve_process(settings: ServiceSettings, services: tuple[str, ...]) -> None:
    """:func:`serve` as the whole process: what is the process's to decide (how child exits are watched, a global
    of asyncio's) is decided here, not in ``serve``, which tests also run inside their own processes."""
    use_pidfd_child_watcher(asyncio.get_running_loop())
    await serve(settings, services)
