"""One Keylime verifier, N Edgeward devices: `python -m benchmarks --only keylime-fleet [--agents 1,4,8,16]
[--window 30] [--quote-interval 2] [--verifier-workers 2]` (minutes long: not part of the default run, nor of CI).

Each device is a real `edgeward run` with its own config, state and swtpm, registered with a real registrar and
enrolled with `keylime_tenant -c add --runtime-policy` (the policy from `edgeward attest keylime-policy`), as in
tests/e2e/test_keylime_agent.py. The fleet grows step by step (devices of a step stay for the next). At each step,
once every device passes, the verifier's per-agent attestation_count is read twice, ``window`` seconds apart:
attestations per second across the fleet (ideal: N / quote interval) and each device's mean time between
attestations against the quote interval (late: over 1.5 times it), and the CPU the verifier, the Edgewards and
the swtpms used in the window (where the machine's two cores went). The
verifier's RSS (its whole process group: the main process and its workers) is read with no device and at every
step, and each Edgeward's RSS. Every process started (registrar, verifier, swtpms, Edgewards) is stopped by pid or
process group, whatever happens, Ctrl-C included.
"""

from __future__ import annotations

import concurrent.futures
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests.fixtures.keylime import KeylimeDevice, KeylimeServices, running_keylime
from tests.fixtures.swtpm import Swtpm

from .footprint import rss_mb

STEPS = (1, 4, 8, 16, 32)
BRING_UP_THREADS = 4  # tenants enrolling at once (each a Python process)


def group_memory_mb(pgid: int) -> tuple[float, float]:
    """RSS and PSS summed over a process group (the verifier forks its workers into its own session). RSS counts
    the pages the forked workers share with their parent once per process; PSS splits them."""
    rss = pss = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for line in (entry / "smaps_rollup").read_text().splitlines():
                if line.startswith(("Rss:", "Pss:")):
                    kb = int(line.split()[1]) / 1024
                    if line.startswith("Rss:"):
                        rss += kb
                    else:
                        pss += kb
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return rss, pss


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                    pids.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return pids


class Fleet:
    """The devices started so far, each with its swtpm; stop() stops every one of them by pid."""

    def __init__(self, base: Path, services: KeylimeServices) -> None:
        self.base = base
        self.services = services
        self.devices: list[KeylimeDevice] = []
        self.tpms: list[Swtpm] = []

    def _start_one(self) -> KeylimeDevice:
        where = self.base / f"device-{len(self.devices):03d}"
        tpm = Swtpm(where / "swtpm" / "state")
        self.tpms.append(tpm)  # listed before it starts: stop() stops whatever got started
        tpm.start()
        device = KeylimeDevice(where / "edgeward", tpm.tcti, str(uuid.uuid4()), self.services.registrar_url,
                               self.services.ca)
        self.devices.append(device)
        device.start()
        return device

    def _enrol(self, device: KeylimeDevice) -> None:
        added = self.services.tenant("-c", "add", "-u", device.agent_uuid, "--runtime-policy", str(device.policy()))
        if added.returncode != 0:
            raise RuntimeError(f"tenant add of {device.base}: {(added.stdout + added.stderr)[-2000:]}")

    def grow_to(self, n: int) -> float:
        """Start devices up to ``n`` and enrol them; the seconds it took. Edgewards are started from this thread
        (each gets SIGTERM when the thread that started it ends: PR_SET_PDEATHSIG); the tenants, short-lived
        clients, run a few at a time."""
        started = time.monotonic()
        new = [self._start_one() for _ in range(n - len(self.devices))]
        pool = concurrent.futures.ThreadPoolExecutor(BRING_UP_THREADS)
        try:
            for f in concurrent.futures.as_completed([pool.submit(self._enrol, d) for d in new]):
                f.result()
        finally:  # on a failure or Ctrl-C: no new tenant starts, those under way end (they time out), then stop()
            pool.shutdown(wait=True, cancel_futures=True)
        return time.monotonic() - started

    def counts(self) -> dict[str, tuple[int, str]]:
        out = {}
        for d in self.devices:
            status = self.services.agent_status(d.agent_uuid)
            out[d.agent_uuid] = (int(status["attestation_count"]), str(status["attestation_status"]))
        return out

    def wait_all_passing(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            counts = self.counts()
            failed = [u for u, (_, s) in counts.items() if s == "FAIL"]
            if failed:
                raise RuntimeError(f"devices failed attestation: {failed}")
            if all(c >= 1 and s == "PASS" for c, s in counts.values()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every device passes after {timeout:.0f} s: {counts}")
            time.sleep(0.5)  # the verifier has no event stream to wait on

    def stop(self) -> None:
        for device in self.devices:
            device.stop()
        for tpm in self.tpms:
            tpm.stop()


def run(steps: list[int], window: float, quote_interval: float, workers: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    stopped = ""
    with tempfile.TemporaryDirectory(prefix="edgeward-fleet-") as d:
        base = Path(d)
        with running_keylime(base / "keylime", quote_interval=quote_interval, workers=workers) as services:
            verifier = services.procs[0].pid  # started first, in a session of its own: pgid == pid
            time.sleep(window / 3)  # nothing to await: "idle" is the absence of events
            idle_mb, idle_pss = group_memory_mb(verifier)
            fleet = Fleet(base, services)
            try:
                for n in sorted(set(steps)):
                    try:
                        bring_up = fleet.grow_to(n)
                        fleet.wait_all_passing(60 + 10 * quote_interval)
                    except RuntimeError as e:  # the step the machine cannot hold: the figures so far stand
                        stopped = f"at {n} agents: {e}"[:500]
                        print(f"  stopped {stopped}", flush=True)
                        break
                    edgewards = [d.proc.pid for d in fleet.devices if d.proc is not None]
                    swtpms = [t.pid for t in fleet.tpms if t.pid is not None]
                    groups = (group_pids(verifier), edgewards, swtpms)
                    cpu0 = [cpu_s(g) for g in groups]
                    before, t0 = fleet.counts(), time.monotonic()
                    time.sleep(window)  # the measurement: attestations completed in a fixed window
                    after, t1 = fleet.counts(), time.monotonic()
                    cpu = [cpu_s(g) - c for g, c in zip(groups, cpu0, strict=True)]
                    if any(s == "FAIL" for _, s in after.values()):
                        raise RuntimeError(f"a device failed attestation during the window: {after}")
                    deltas = [after[u][0] - before[u][0] for u in after]
                    elapsed = t1 - t0
                    periods = [elapsed / k if k else float("inf") for k in deltas]
                    verifier_mb, verifier_pss = group_memory_mb(verifier)
                    edgeward_mb = [rss_mb(dev.proc.pid) for dev in fleet.devices if dev.proc is not None]
                    swtpm_mb = [rss_mb(t.pid) for t in fleet.tpms if t.pid is not None]
                    row = {
                        "agents": n, "bring_up_s": bring_up, "window_s": elapsed,
                        "attestations": sum(deltas), "attestations_per_s": sum(deltas) / elapsed,
                        "ideal_per_s": n / quote_interval,
                        "period_median_s": statistics.median(periods), "period_max_s": max(periods),
                        "late_devices": sum(p > 1.5 * quote_interval for p in periods),
                        "verifier_rss_mb": verifier_mb,
                        "verifier_mb_per_agent": (verifier_mb - idle_mb) / n,
                        "verifier_pss_mb": verifier_pss, "verifier_pss_mb_per_agent": (verifier_pss - idle_pss) / n,
                        "edgeward_rss_mb_median": statistics.median(edgeward_mb),
                        "edgeward_rss_mb_max": max(edgeward_mb),
                        "swtpm_rss_mb_median": statistics.median(swtpm_mb),
                        "load_1min": os.getloadavg()[0],
                        # CPU seconds per second of the window: 2.0 is both cores
                        "verifier_cpu": cpu[0] / elapsed, "edgewards_cpu": cpu[1] / elapsed,
                        "swtpms_cpu": cpu[2] / elapsed,
                        "verifier_cpu_ms_per_attestation": 1000 * cpu[0] / max(1, sum(deltas)),
                        "edgeward_cpu_ms_per_attestation": 1000 * cpu[1] / max(1, sum(deltas)),
                    }
                    rows.append(row)
                    print(f"  {n} agents: {row['attestations_per_s']:.2f} attestations/s "
                          f"(ideal {row['ideal_per_s']:.1f}), period median {row['period_median_s']:.2f} s, "
                          f"max {row['period_max_s']:.2f} s, verifier {verifier_mb:.0f} MB, CPU verifier "
                          f"{row['verifier_cpu']:.2f} edgewards {row['edgewards_cpu']:.2f} swtpms "
                          f"{row['swtpms_cpu']:.2f}, load {row['load_1min']:.1f}", flush=True)
            finally:
                fleet.stop()
    return {"quote_interval_s": quote_interval, "verifier_workers": workers, "verifier_idle_rss_mb": idle_mb,
            "verifier_idle_pss_mb": idle_pss,
            "cpus": os.cpu_count(), "rows": rows, "stopped": stopped}
