"""The process engine names a module's process by (pid, start time in ticks since boot) in its state records and
kills "what a previous daemon left running" at start if both match -- with no boot id. After a power cut and a
reboot, the record still holds last boot's (pid, start): if any process of the new boot has that pid and started at
that tick (boot sequences are deterministic enough on embedded devices; the daemon starts early), the daemon
SIGTERMs its whole process group and every descendant, then SIGKILLs them, as root.

fix13d's variant: the daemon now records the boot id with (pid, start). A reboot changes it, so this writes the
record as a reboot leaves it: last boot's id (a random one here), or with `--no-boot-id` none at all (a record
written by a version before boot ids were recorded).

Simulated here by writing the record as a reboot would leave it (the module was running at pid P, start S) where
(P, S) is now an unrelated process (a `sleep` of another user, in its own process group with a child).

PASS: the unrelated process survives the daemon's start.
"""

import json
import os
import subprocess
import sys
import time
import uuid

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/brk13b")  # brk13b's _lib (Daemon, temp_user)
from _lib import SYSPY, Daemon, temp_user, verdict


def start_ticks(pid: int) -> int:
    raw = open(f"/proc/{pid}/stat", "rb").read()  # noqa: SIM115, PTH123
    return int(raw[raw.rfind(b")") + 2:].split()[19])


def main() -> int:
    with temp_user("brk13b-u11") as pw:
        d = Daemon("stale")
        try:
            d.start()
            d.create("mod", SYSPY, ["-c", "import time; time.sleep(600)"], User=str(pw.pw_uid))
            d.start_module("mod")
            time.sleep(1)
            d.stop()  # a clean stop here; a power cut would leave the record saying "running at (pid, start)"
            # an unrelated process of the "new boot": another user's service with a child
            bystander = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c",
                                          "sleep 300 & wait"], start_new_session=True)
            time.sleep(0.5)
            record_path = d.state / "runtime" / "processes" / "modules" / "mod.json"
            if not record_path.exists():
                found = list(d.state.rglob("mod.json"))
                record_path = found[0]
            rec = json.loads(record_path.read_text())
            rec.update(state="running", pid=bystander.pid, pid_start=start_ticks(bystander.pid), want_running=True)
            if "--no-boot-id" in sys.argv:
                rec.pop("boot_id", None)
            else:
                rec["boot_id"] = str(uuid.uuid4())  # last boot's id: not this one
            record_path.write_text(json.dumps(rec, sort_keys=True))
            d.start()
            time.sleep(3)
            alive = bystander.poll() is None
            print("bystander", bystander.pid, "alive after the daemon's start:", alive)
            print([ln for ln in d.logtext().splitlines() if "left running" in ln])
            if alive:
                os.killpg(bystander.pid, 9)
            bystander.wait()
            d.mg("POST", "/modules/mod/stop")
            return verdict(alive, "a record from an earlier boot cannot make the daemon kill an unrelated process")
        finally:
            d.cleanup()


if __name__ == "__main__":
    sys.exit(main())
