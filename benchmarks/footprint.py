"""Footprint and start-up of the daemon, against a floor measured in the same run.

The floor is the least a Python daemon of this kind can be: a process that imports only aiohttp (the package, as
an application does) and cryptography (x509 and EC keys: its Rust extension and OpenSSL), and serves one trivial
route on a Unix socket. Each process announces READY=1 on $NOTIFY_SOCKET, as the daemon does for systemd.

- RSS is VmRSS of the process itself, read from /proc after it has been idle for a second past READY; children
  are not included (host-process modules are processes of their own; the daemon starts none at idle).
- Start to READY: from just before the process is spawned to the READY=1 datagram, median of several starts on
  the same state directory (the first start, which creates the local CA and the device certificate, is run once
  beforehand and reported on its own).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeward.supervise import stop_daemon

__all__ = ["GOALS", "floor_rss_mb", "rss_mb", "run", "started"]

# goal name -> (figure, limit): RSS as a ratio to the floor, start-up in seconds
GOALS = {"serve keys RSS": 1.1, "run idle RSS": 1.2, "run + 50 modules RSS": 1.3,
         "serve keys start to READY s": 0.4, "run start to READY s": 0.6}

FLOOR = """\
import os, socket
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def ready(app: web.Application) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(os.environ["NOTIFY_SOCKET"])
        s.sendall(b"READY=1")


app = web.Application()
app.router.add_get("/", hello)
app.on_startup.append(ready)
web.run_app(app, path=os.environ["FLOOR_SOCKET"], print=None)
"""

IDLE_SECONDS = 1.0


def rss_mb(pid: int) -> float:
    """VmRSS of one process (not its children)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ProcessLookupError(pid)


def _children(pid: int) -> int:
    tasks = Path(f"/proc/{pid}/task")
    return sum(len((t / "children").read_text().split()) for t in tasks.iterdir())


@dataclass(frozen=True)
class Started:
    proc: subprocess.Popen[bytes]
    seconds_to_ready: float


@contextlib.contextmanager
def started(argv: Sequence[str], env: dict[str, str], log: Path, timeout: float = 60.0) -> Iterator[Started]:
    """Spawn ``python <argv>`` and wait for READY=1; stopped by its pid afterwards (its tree too, if it left one)."""
    with tempfile.TemporaryDirectory(prefix="edgeward-notify-") as d:
        addr = Path(d) / "notify.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
            listener.bind(str(addr))
            setpriv = shutil.which("setpriv")  # the kernel stops the child if this thread dies
            prefix = [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
            with log.open("ab") as out:
                t0 = time.perf_counter()
                proc = subprocess.Popen([*prefix, sys.executable, *argv], env=dict(env, NOTIFY_SOCKET=str(addr)),
                                        stdout=out, stderr=subprocess.STDOUT)
            try:
                deadline = t0 + timeout
                while True:
                    listener.settimeout(max(0.01, min(0.5, deadline - time.perf_counter())))
                    try:
                        if b"READY=1" in listener.recv(4096):
                            break
                    except TimeoutError:
                        pass
                    if proc.poll() is not None or time.perf_counter() > deadline:
                        raise RuntimeError(f"{argv} not ready (exit {proc.returncode}):\n"
                                           f"{log.read_text(errors='replace')[-3000:]}")
                yield Started(proc, time.perf_counter() - t0)
            finally:
                stop_daemon(proc)


def _idle_rss(s: Started) -> tuple[float, int]:
    """RSS and number of child processes once the process has had a second to settle after READY."""
    time.sleep(IDLE_SECONDS)  # nothing to await: "idle" is the absence of events
    return rss_mb(s.proc.pid), _children(s.proc.pid)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("EDGEWARD_LOG_LEVEL", None)
    return env


def _floor(tmp: Path, starts: int) -> dict[str, Any]:
    script = tmp / "floor.py"
    script.write_text(FLOOR)
    env = dict(_env(), FLOOR_SOCKET=str(tmp / "floor.sock"))
    times: list[float] = []
    for i in range(starts):
        with started([str(script)], env, tmp / "floor.log") as s:
            times.append(s.seconds_to_ready)
            if i == starts - 1:
                rss = _idle_rss(s)[0]
    return {"rss_idle_mb": rss, "start_to_ready_s": statistics.median(times)}


def floor_rss_mb() -> float:
    """The floor's idle RSS, for a benchmark that compares with it when this one did not run."""
    with tempfile.TemporaryDirectory() as d:
        return float(_floor(Path(d), 1)["rss_idle_mb"])


def _edgeward(args: Sequence[str], state: Path) -> list[str]:
    return ["-m", "edgeward", *args, "--state-dir", str(state), "--run-dir", str(state / "run")]


def _measure(args: list[str], state: Path, log: Path, starts: int) -> dict[str, Any]:
    """One first start (creates the state), then `starts` timed starts; RSS and children at idle on the last."""
    with started(_edgeward(args, state), _env(), log) as first:
        first_s = first.seconds_to_ready
    times: list[float] = []
    for i in range(starts):
        with started(_edgeward(args, state), _env(), log) as s:
            times.append(s.seconds_to_ready)
            if i == starts - 1:
                rss, children = _idle_rss(s)
    return {"first_start_s": first_s, "start_to_ready_s": statistics.median(times), "starts": times,
            "rss_idle_mb": rss, "children_at_idle": children}


def run(starts: int = 5) -> dict[str, Any]:
    """The floor, `serve keys` (embedded defaults and, as packaged, --config-dir) and `run` on embedded defaults."""
    compile_package()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.chmod(tmp, 0o755)
        floor = _floor(tmp, starts)
        keys = _measure(["serve", "keys"], tmp / "keys", tmp / "keys.log", starts)
        config_dir = tmp / "etc"
        subprocess.run([sys.executable, "-m", "edgeward", "config", "apply", "-c", str(_empty_config(tmp)),
                        "--out-dir", str(config_dir), "--no-restart"], check=True, env=_env(),
                       stdout=subprocess.DEVNULL)
        keys_dir = _measure(["serve", "keys", "--config-dir", str(config_dir)], tmp / "keys-dir",
                            tmp / "keys-dir.log", starts)
        run_ = _measure(["run"], tmp / "run", tmp / "run.log", starts)
    return {"floor_rss_mb": floor["rss_idle_mb"], "floor_start_to_ready_s": floor["start_to_ready_s"], "serve_keys": keys, "serve_keys_config_dir": keys_dir, "run": run_}


def compile_package() -> None:
    """Bytecode for Edgeward as the package's postinst writes it. The floor's aiohttp and cryptography come with
    theirs (pip compiles at install); an editable checkout under PYTHONDONTWRITEBYTECODE has none, so every start
    would compile ~150 modules (0.4-0.5 s and 1.5-2 MB) that no installed device ever does."""
    import edgeward

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(edgeward.__file__).parent)], check=True,
                   stdout=subprocess.DEVNULL)


def _empty_config(tmp: Path) -> Path:
    path = tmp / "config.toml"
    path.write_text("")
    return path
