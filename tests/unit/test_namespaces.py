"""Namespaces as the proof of where a process lives: the host's own processes are host, anything unshared is not."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from edgeward.attest.namespaces import (
    ReferenceProcess,
    host_namespaces,
    is_host_process,
    namespaces_of,
    pid_namespace_depth,
)


def _sleeper_of(proc: subprocess.Popen[bytes]) -> int:
    """unshare forks the sleeper into the new namespaces: that child's pid."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        if kids and Path(f"/proc/{kids[0]}/comm").read_text().strip() == "sleep":
            return int(kids[0])
        time.sleep(0.01)
    raise AssertionError("unshare's sleeper did not start")


def test_this_process_is_host_and_a_missing_pid_is_not() -> None:
    assert host_namespaces() is not None
    assert is_host_process(os.getpid())
    assert namespaces_of(2**22 + 7) is None
    assert not is_host_process(2**22 + 7)


def test_a_process_in_its_own_pid_and_mount_namespaces_is_not_host() -> None:
    # --kill-child: the sleeper (init of its pid namespace) dies with unshare, which is what the test kills.
    proc = subprocess.Popen(["unshare", "--pid", "--mount", "--fork", "--kill-child", "sleep", "30"])
    child = None
    try:
        child = _sleeper_of(proc)
        assert namespaces_of(child) is not None
        assert not is_host_process(child)
    finally:
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        proc.kill()
        proc.wait()


def test_reference_process_proves_namespaces_only_while_it_is_the_same_process() -> None:
    assert ReferenceProcess.of(0) is None and ReferenceProcess.of(2**22 + 7) is None
    me = ReferenceProcess.of(os.getpid())
    assert me is not None and me.alive() and me.namespaces() == namespaces_of(os.getpid())
    # The same pid with another start time is another process (the pid was reused): its namespaces prove nothing.
    assert ReferenceProcess(me.pid, me.started + 1).namespaces() is None
    proc = subprocess.Popen(["sleep", "30"])
    try:
        ref = ReferenceProcess.of(proc.pid)
        assert ref is not None and ref.namespaces() == namespaces_of(os.getpid())
    finally:
        proc.kill()
        proc.wait()
    assert not ref.alive() and ref.namespaces() is None


def _verdicts_as_nobody(pids: list[int]) -> list[bool]:
    """is_host_process as an unprivileged service sees it: another user, who may not read the callers' (or pid 1's)
    namespace links, in a mount namespace of its own (as a hardened unit's)."""
    code = ("import sys; from edgeward.attest.namespaces import is_host_process, namespaces_of\n"
            "assert namespaces_of(1) is None, 'pid 1 readable: not the unprivileged case'\n"
            "print(' '.join(str(is_host_process(int(p))) for p in sys.argv[1:]))")
    # A copy the other user can read, wherever the checkout is (a home directory is not).
    src = tempfile.mkdtemp(prefix="edgeward-ns-")
    try:
        shutil.copytree(Path(__file__).resolve().parents[2] / "src" / "edgeward", Path(src) / "edgeward",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for d, _, files in os.walk(src):
            os.chmod(d, 0o755)
            for f in files:
                os.chmod(Path(d) / f, 0o644)
            out = subprocess.run(["unshare", "--mount", "--propagation", "private", "setpriv", "--reuid=65534",
                              "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
                              "/usr/bin/env", f"PYTHONPATH={src}", "/usr/bin/python3", "-c", code, *map(str, pids)],
                             capture_output=True, text=True, timeout=60, check=True)
    finally:
        shutil.rmtree(src)
    return [word == "True" for word in out.stdout.split()]


def test_an_unprivileged_service_tells_host_from_contained_by_pid_namespace() -> None:
    """The packaged units run as their own users: they decide "host" from NSpid and the cgroup. A root process on
    the host (this test) is host; a root process in a pid namespace of its own is not, though neither's links can
    be read."""
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "sleep", "30"])
    try:
        child = _sleeper_of(proc)
        assert pid_namespace_depth(child) == 2 and pid_namespace_depth(os.getpid()) == 1
        assert _verdicts_as_nobody([os.getpid(), child, 2**22 + 7]) == [True, False, False]
    finally:
        proc.kill()
        proc.wait()
