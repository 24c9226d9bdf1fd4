"""A Debian 12 device for the package tests: a root filesystem made by mmdebstrap from Debian's packages, booted
with systemd-nspawn (systemd as PID 1), commands run inside with nsenter, stopped by the nspawn process's pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Device", "build_deb", "make_rootfs"]

REPO = Path(__file__).resolve().parents[2]
# What a minimal device has, plus what the test drives it with (curl for the APIs, swtpm for a TPM).
ROOTFS_PACKAGES = "systemd,systemd-sysv,dbus,python3,curl,ca-certificates,swtpm,swtpm-tools"
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb"}


def build_deb(revision: int, out_dir: Path) -> Path:
    """`make deb` with a Debian revision (a higher one is an upgrade)."""
    env = {**os.environ, "EDGEWARD_DEB_REVISION": str(revision), "EDGEWARD_DEB_DIR": str(out_dir)}
    subprocess.run([str(REPO / "scripts" / "build-deb.sh")], check=True, env=env, timeout=900,
                   stdout=subprocess.DEVNULL)
    found = sorted(out_dir.glob(f"edgeward_*-{revision}_*.deb"))
    assert len(found) == 1, found
    return found[0]


def make_rootfs(root: Path) -> None:
    subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={ROOTFS_PACKAGES}", "bookworm",
                    str(root)], check=True, timeout=600, stdout=subprocess.DEVNULL)


def offline(root: Path, *cmd: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """A command in the root filesystem before it boots (no systemd running: as in an image build)."""
    return subprocess.run(["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "-D", str(root),
                           "--setenv=DEBIAN_FRONTEND=noninteractive", *cmd],
                          capture_output=True, text=True, timeout=timeout, env=CLEAN_ENV)


@dataclass
class Device:
    root: Path
    proc: subprocess.Popen[bytes]
    leader: int  # the container's systemd, as this host sees it

    @classmethod
    def boot(cls, root: Path, log: Path) -> Device:
        with log.open("wb") as out:
            proc = subprocess.Popen(["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "-D", str(root),
                                     "-b", "--console=pipe"], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=CLEAN_ENV)
        try:
            leader = cls._find_leader(proc)
            device = cls(root, proc, leader)
            state = device.wait_booted()
            assert state in ("running", "degraded"), (state, device.run("systemctl", "--failed").stdout,
                                                      device.run("systemctl", "is-system-running").stderr)
            return device
        except BaseException:
            cls._stop(proc)
            raise

    def wait_booted(self) -> str:
        """systemd's own answer once its manager is reachable (before that, nothing in the container can say)."""
        deadline = time.monotonic() + 120
        while True:
            done = self.run("systemctl", "is-system-running", "--wait", timeout=120)
            if done.stdout.strip() or time.monotonic() > deadline:
                return done.stdout.strip()
            time.sleep(0.2)  # the manager's socket is not there yet

    @staticmethod
    def _find_leader(proc: subprocess.Popen[bytes]) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited with {proc.returncode}")
            with contextlib.suppress(OSError):
                for kid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                    if Path(f"/proc/{kid}/comm").read_text().strip() == "systemd":
                        return int(kid)
            time.sleep(0.05)
        raise AssertionError("the container's systemd did not start")

    def run(self, *cmd: str, check: bool = False, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """A command inside the booted device (its namespaces, its root), with a clean environment."""
        done = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "/usr/bin/env", "-i",
                               *(f"{k}={v}" for k, v in CLEAN_ENV.items()), *cmd],
                              capture_output=True, text=True, timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}\n"
                                 f"journal:\n{self.journal()}")
        return done

    def journal(self, lines: int = 40) -> str:
        """The Edgeward units' last log lines, for a failure's message."""
        return subprocess.run(["nsenter", "-t", str(self.leader), "-a", "journalctl", "--no-pager", "-n", str(lines),
                               "-u", "edgeward*"], capture_output=True, text=True, timeout=60).stdout

    def sh(self, script: str, *, check: bool = True, timeout: float = 120) -> str:
        return self.run("/bin/sh", "-c", script, check=check, timeout=timeout).stdout

    def stop(self) -> None:
        self._stop(self.proc)

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        """By the nspawn process's pid: once for a clean power-off, again (after a grace) for an immediate one."""
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def remove_rootfs(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
