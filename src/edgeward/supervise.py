"""Start an Edgeward daemon as a child process and know, by an event rather than polling, when it is ready.

Used by the demo, the CLI tests and the benchmarks. The child is always stopped by its pid, and nothing it started
may outlive it:
- SIGTERM first, so the daemon stops its host-process modules itself; a daemon that does not stop in time is
  killed, and so is every process of its tree as it was just before (pid and start time, so a recycled pid is
  never signalled);
- the kernel sends the daemon SIGTERM when the thread that started it dies, even by SIGKILL (setpriv's
  ``--pdeathsig``, when util-linux is there), so a demo or a benchmark that dies cannot leave one behind;
- ``sigterm_as_interrupt`` makes SIGTERM and SIGHUP interrupt the caller like Ctrl-C, so its ``finally`` blocks
  run instead of the process ending on the spot.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from .runtime.engines.procfs import ProcStat, descendants, read_stat, send_signal

__all__ = ["DaemonFailed", "running_daemon", "sigterm_as_interrupt", "start_daemon", "stop_daemon"]

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class DaemonFailed(RuntimeError):
    pass


def start_daemon(args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 60.0,
                 log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Run ``edgeward <args>`` and wait for its READY=1 notification (or its early exit)."""
    tmp = Path(tempfile.mkdtemp(prefix="edgeward-notify-"))
    addr = tmp / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(addr))
    listener.settimeout(0.5)
    child_env = dict(os.environ if env is None else env, NOTIFY_SOCKET=str(addr))
    # Output goes to a file, never a pipe: an unread pipe would block a chatty daemon.
    own_log = log_path is None
    log_path = log_path or Path(tempfile.mkdtemp(prefix="edgeward-log-")) / "daemon.log"
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with log_path.open("ab") as out:
        proc = subprocess.Popen([*_parent_death_signal(), sys.executable, "-m", "edgeward", *args],
                                env=child_env, stdout=out, stderr=subprocess.STDOUT)
    proc.log_path = log_path  # type: ignore[attr-defined]
    proc.own_log = own_log  # type: ignore[attr-defined]
    try:
        waited = 0.0
        while waited < timeout:
            try:
                if b"READY=1" in listener.recv(4096):
                    return proc
            except TimeoutError:
                waited += 0.5
            if proc.poll() is not None:
                detail = log_path.read_text(errors="replace")[-4000:]
                raise DaemonFailed(f"edgeward exited with code {proc.returncode} before it was ready\n{detail}")
        stop_daemon(proc)
        raise DaemonFailed(f"edgeward was not ready within {timeout:.0f}s")
    except BaseException:
        stop_daemon(proc)
        raise
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            addr.unlink()
            tmp.rmdir()


def _parent_death_signal() -> list[str]:
    """setpriv sets the parent-death signal and execs the daemon, so the pid stays the daemon's."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv is not None else []


def _tree(pid: int) -> list[ProcStat]:
    root = read_stat(pid)
    return [root, *descendants(root)] if root is not None else []


def _kill_left(tree: Sequence[ProcStat]) -> list[int]:
    """SIGKILL whichever of `tree` still runs (the same process: pid and start time); the pids signalled."""
    return [st.pid for st in tree if send_signal(st.pid, st.start_time, signal.SIGKILL)]


def stop_daemon(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM by pid, then SIGKILL if it does not stop in time; then SIGKILL whatever it started and left
    running (its tree just before the SIGTERM and, after a timeout, just before the SIGKILL).

    Ctrl-C and SIGTERM wait until this is done (blocked, then delivered): an interrupt in the middle of a stop
    would leave the daemon or its modules running.
    """
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        if proc.poll() is None:
            tree = _tree(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                tree = [*tree, *_tree(proc.pid)]
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            left = _kill_left([st for st in tree if st.pid != proc.pid])
            if left:
                print(f"edgeward (pid {proc.pid}) left processes running: killed {left}", file=sys.stderr)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    if getattr(proc, "own_log", False):  # a log nobody asked to keep
        shutil.rmtree(proc.log_path.parent, ignore_errors=True)  # type: ignore[attr-defined]
    return proc.returncode


@contextlib.contextmanager
def running_daemon(args: Sequence[str], env: dict[str, str] | None = None,
                   log_path: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_daemon(args, env, log_path=log_path)
    try:
        yield proc
    finally:
        stop_daemon(proc)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While active (main thread only), SIGTERM and SIGHUP raise KeyboardInterrupt as Ctrl-C does, so the
    ``finally`` blocks that stop what was started run; their default action ends the process on the spot.
    A library that catches the interrupt and raises its own error instead (aiohttp's response parser turns it into
    a ClientPayloadError) still ends in KeyboardInterrupt here, so the caller exits as interrupted (130)."""
    received: list[str] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        raise KeyboardInterrupt(received[-1])

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    except Exception as e:
        if received:
            raise KeyboardInterrupt(received[0]) from e
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
