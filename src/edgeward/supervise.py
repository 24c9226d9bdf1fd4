"""Start an Edgeward daemon as a child process and know, by an event rather than polling, when it is ready.

Used by the demo, the CLI tests and the benchmarks. The child is always stopped by its pid.
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

__all__ = ["DaemonFailed", "running_daemon", "start_daemon", "stop_daemon"]


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
        proc = subprocess.Popen([sys.executable, "-m", "edgeward", *args], env=child_env,
                                stdout=out, stderr=subprocess.STDOUT)
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


def stop_daemon(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM by pid, then SIGKILL if it does not stop in time."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
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
