"""The Debian package on a Debian 12 device with systemd as PID 1: install with apt, socket activation, one user per
service, config apply, a host-process module signing through its workload socket, upgrade keeping everything, purge.

The README's install section is what this runs (`apt-get install ./edgeward_<version>_<arch>.deb`, then
`edgeward config apply`). The tests run in file order on one device; each step names what it found.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .nspawn import Device, build_deb, make_rootfs, offline, remove_rootfs

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the package test builds a root filesystem and boots it (root)"),
    pytest.mark.timeout(900),
]

SERVICES = {"keyd": "aziotks", "certd": "aziotcs", "identityd": "aziotid", "tpmd": "aziottpm", "edged": "root"}
STATE = {"keyd": "keys", "certd": "certd", "identityd": "identityd"}  # under /var/lib/edgeward
SOCKETS = ["edgeward-keyd.socket", "edgeward-certd.socket", "edgeward-identityd.socket", "edgeward-tpmd.socket",
           "edgeward-edged.mgmt.socket", "edgeward-edged.workload.socket"]
CONFIG = """\
hostname = "pkgdevice"

[edgeward.runtime]
engine = "process"

[tpm]
tcti = "swtpm:host=127.0.0.1,port=2321"
"""
README = Path(__file__).resolve().parents[2] / "README.md"
MGMT = "--unix-socket /run/edgeward/mgmt/mgmt.sock"
API = "api-version=2022-08-03"
DEMO = "/usr/lib/edgeward/python/edgeward/runtime/demo_module.py"
# Follows a module's log on the management socket until the demo module says it is done (Debian's python3, stdlib).
FOLLOW_LOGS = """
import http.client, socket, sys
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(90)
        self.sock.connect("/run/edgeward/mgmt/mgmt.sock")
conn = Unix("mgmt")
conn.request("GET", f"/modules/{sys.argv[1]}/logs?api-version=2022-08-03&follow=true")
resp = conn.getresponse()
while True:
    line = resp.readline()
    if not line:
        break
    sys.stdout.write(line.decode(errors="replace"))
    if sys.argv[2].encode() in line:
        break
"""


# How many processes run `sleep <argv[1]>`, waited for (10 s at most) to be argv[2]; printed, exit 0 when reached.
COUNT_SLEEPS = """
import os, sys, time
def count():
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                n += f.read() == b"sleep\\0" + sys.argv[1].encode() + b"\\0"
        except OSError:
            pass
    return n
for _ in range(100):
    n = count()
    if n == int(sys.argv[2]):
        break
    time.sleep(0.1)
print(n)
sys.exit(0 if n == int(sys.argv[2]) else 1)
"""


class World:
    """What the steps share: the device, the two builds, and what was seen before the upgrade."""

    def __init__(self, device: Device, debs: list[Path]) -> None:
        self.device = device
        self.debs = debs
        self.before: dict[str, object] = {}


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    for tool in ("mmdebstrap", "systemd-nspawn", "nsenter", "dpkg-deb"):
        assert shutil.which(tool), f"{tool} is missing (scripts/setup.sh installs it)"
    work = Path(tempfile.mkdtemp(prefix="edgeward-pkg-", dir="/var/tmp"))
    device: Device | None = None
    try:
        debs = [build_deb(1, work / "dist"), build_deb(2, work / "dist")]
        root = work / "root"
        make_rootfs(root)
        for deb in debs:
            shutil.copy(deb, root / "root" / deb.name)
        # a software TPM the device's TPM service reaches over TCP (a unit, so it is gone with the container)
        (root / "etc/systemd/system/swtpm.service").write_text(
            "[Service]\nExecStartPre=/bin/mkdir -p /var/lib/swtpm-test\n"
            "ExecStart=/usr/bin/swtpm socket --tpm2 --tpmstate dir=/var/lib/swtpm-test "
            "--server type=tcp,port=2321,bindaddr=127.0.0.1 --ctrl type=tcp,port=2322,bindaddr=127.0.0.1 "
            "--flags not-need-init,startup-clear\n[Install]\nWantedBy=multi-user.target\n")
        (root / "etc/systemd/system/multi-user.target.wants").mkdir(parents=True, exist_ok=True)
        (root / "etc/systemd/system/multi-user.target.wants/swtpm.service").symlink_to(
            "/etc/systemd/system/swtpm.service")
        # the install, as on a device: apt resolves the dependencies from Debian's archive
        done = offline(root, "/bin/sh", "-c", f"apt-get update -qq && apt-get install -y -q /root/{debs[0].name}")
        assert done.returncode == 0, done.stdout + done.stderr
        device = Device.boot(root, work / "console.log")
        yield World(device, debs)
    finally:
        if device is not None:
            device.stop()
        remove_rootfs(work)


def _show(device: Device, unit: str, prop: str) -> str:
    return device.run("systemctl", "show", "-p", prop, "--value", unit, check=True).stdout.strip()


def _main_pid(device: Device, service: str) -> int:
    return int(_show(device, f"edgeward-{service}.service", "MainPID"))


def _uid_of(device: Device, pid: int) -> int:
    status = device.sh(f"cat /proc/{pid}/status")
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))


def test_install_listens_on_every_socket_and_starts_no_service_before_a_config(world: World) -> None:
    d = world.device
    for socket in SOCKETS:
        assert _show(d, socket, "ActiveState") == "active", socket
        assert _show(d, socket, "SubState") == "listening", socket
    for service in ("keyd", "certd", "identityd", "tpmd"):
        assert _show(d, f"edgeward-{service}.service", "ActiveState") == "inactive", service
    # the runtime is enabled (it runs the modules) but waits for a config: exit 3, not restarted in a loop
    assert _show(d, "edgeward-edged.service", "ExecMainStatus") == "3"
    assert "edgeward config apply" in d.sh("journalctl -u edgeward-edged.service --no-pager")
    modes = d.sh("stat -c '%n %a %U %G' /run/edgeward/*.sock /run/edgeward/mgmt/mgmt.sock")
    for name, user in (("keyd", "aziotks"), ("certd", "aziotcs"), ("identityd", "aziotid"), ("tpmd", "aziottpm")):
        assert f"/run/edgeward/{name}.sock 660 {user} {user}" in modes
    assert "/run/edgeward/mgmt/mgmt.sock 666 root root" in modes
    # who may connect to whom: each caller is in the groups of the services it calls, and no one else is
    groups = {u: set(d.sh(f"id -nG {u}").split()) for u in ("aziotks", "aziotcs", "aziotid", "aziottpm")}
    assert groups["aziotks"] == {"aziotks", "tss"}  # tss: the TPM device nodes, for TPM-backed keys
    assert groups["aziotcs"] == {"aziotcs", "aziotks"}
    assert groups["aziotid"] == {"aziotid", "aziotks", "aziotcs", "aziottpm"}


def test_config_apply_writes_each_service_its_own_file_and_starts_the_runtime(world: World) -> None:
    d = world.device
    # the README's local-only install line, as it is written there
    line = next(line for line in README.read_text().splitlines() if "config.toml.edgeward.template" in line
                and line.startswith("sudo "))
    d.sh(line.split("#", 1)[0].replace("sudo ", ""), timeout=180)
    files = d.sh("stat -c '%n %a %U' /etc/aziot/config.toml /etc/edgeward/*.toml")
    assert "/etc/aziot/config.toml 600 root" in files, files
    for name, user in (("keyd", "aziotks"), ("certd", "aziotcs"), ("identityd", "aziotid"), ("edged", "root")):
        assert f"/etc/edgeward/{name}.toml 600 {user}" in files, files
    # the module runtime (enabled, waiting for a config) was started by apply
    assert _show(d, "edgeward-edged.service", "ActiveState") == "active", d.journal()
    # the device's own settings and its TPM: apply writes the TPM service's file and restarts what changed
    d.run("/bin/sh", "-c", "cat >> /etc/aziot/config.toml", input=CONFIG, check=True)
    d.run("edgeward", "config", "apply", check=True, timeout=180)
    assert "/etc/edgeward/tpmd.toml 600 aziottpm" in d.sh("stat -c '%n %a %U' /etc/edgeward/tpmd.toml")
    assert _show(d, "edgeward-edged.service", "ActiveState") == "active", d.journal()


def test_each_service_starts_on_its_first_connection_as_its_own_user(world: World) -> None:
    d = world.device
    # the runtime's start reached the keys service (its audit key): the keys socket started it
    assert _show(d, "edgeward-keyd.service", "ActiveState") == "active"
    check = d.run("edgeward", "check", timeout=180)
    assert check.returncode == 0, check.stdout + check.stderr + d.journal()
    # a service that is not running starts on the next connection to its socket, with its socket's file descriptor
    for service, route in (("certd", "certificates/aziot-edged-ca"), ("identityd", "identities/identity")):
        d.run("systemctl", "stop", f"edgeward-{service}.service", check=True)
        assert _show(d, f"edgeward-{service}.service", "ActiveState") == "inactive", service
        assert _show(d, f"edgeward-{service}.socket", "SubState") == "listening", service
        d.sh(f"curl -sS --unix-socket /run/edgeward/{service}.sock "
             f"'http://{service}/{route}?api-version=2020-09-01' >/dev/null")
        assert _show(d, f"edgeward-{service}.service", "ActiveState") == "active", service
        assert _show(d, f"edgeward-{service}.service", "TriggeredBy") == f"edgeward-{service}.socket"
    # the TPM service: started by its first caller (the runtime's audit counter), on the device's TPM
    d.sh("curl -sf --unix-socket /run/edgeward/tpmd.sock 'http://tpmd/get_tpm_keys?api-version=2020-09-01' "
         ">/dev/null || true")
    assert _show(d, "edgeward-tpmd.service", "ActiveState") == "active", d.sh(
        "journalctl -u edgeward-tpmd --no-pager | tail -20")
    for service, user in SERVICES.items():
        uid = int(d.sh(f"id -u {user}"))
        assert _uid_of(d, _main_pid(d, service)) == uid, service


def test_the_readmes_hardening_figures_are_systemd_analyzes(world: World) -> None:
    readme = README.read_text()
    documented = dict(re.findall(r"^\| (edgeward-\w+\.service) \| ([0-9.]+ [A-Z]+) \|$", readme, re.M))
    assert len(documented) == 5, documented
    for unit, figure in documented.items():
        last = world.device.sh(f"systemd-analyze security --no-pager {unit}").strip().splitlines()[-1]
        found = re.search(r": ([0-9.]+ [A-Z]+)", last)
        assert found is not None and found.group(1) == figure, (unit, last, figure)


def test_no_service_can_read_another_services_state(world: World) -> None:
    d = world.device
    for service, user in SERVICES.items():
        if user == "root":
            continue
        own = STATE.get(service)
        if own is not None:
            d.sh(f"setpriv --reuid {user} --regid {user} --init-groups ls /var/lib/edgeward/{own} >/dev/null")
        for other in ("keys", "certd", "identityd", "runtime", "audit"):
            if other == own:
                continue
            refused = d.run("setpriv", "--reuid", user, "--regid", user, "--init-groups", "ls",
                            f"/var/lib/edgeward/{other}")
            assert refused.returncode != 0 and "Permission denied" in refused.stderr, (user, other)
        for other_file in ("keyd", "certd", "identityd", "edged"):
            if other_file == service:
                continue
            refused = d.run("setpriv", "--reuid", user, "--regid", user, "--init-groups", "cat",
                            f"/etc/edgeward/{other_file}.toml")
            assert refused.returncode != 0, (user, other_file)
    # the runtime runs as root without the capabilities that bypass file permissions
    cap_eff = int(next(line.split()[1] for line in d.sh(f"cat /proc/{_main_pid(d, 'edged')}/status").splitlines()
                       if line.startswith("CapEff:")), 16)
    assert not cap_eff & (1 << 1) and not cap_eff & (1 << 2), hex(cap_eff)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH


def test_a_host_process_module_deployed_through_the_management_api_signs_through_its_workload_socket(
        world: World) -> None:
    d = world.device
    body = json.dumps({"name": "signer", "imagePullPolicy": "never",
                       "config": {"image": "/usr/bin/python3", "createOptions": {"Cmd": [DEMO], "User": "nobody"}}})
    d.run("curl", "-sS", "--fail-with-body", *MGMT.split(), "-H", "Content-Type: application/json", "-d", body,
          f"http://mgmt/modules?{API}", check=True)
    d.run("curl", "-sS", "--fail-with-body", *MGMT.split(), "-X", "POST",
          f"http://mgmt/modules/signer/start?{API}", check=True)
    logs = d.run("python3", "-c", FOLLOW_LOGS, "signer", "DEMO-DONE", timeout=120).stdout
    assert "DEMO-DONE" in logs, logs
    steps = {s["step"]: s for s in (json.loads(line.split("DEMO ", 1)[1]) for line in logs.splitlines()
                                    if "DEMO {" in line)}
    sign = steps["SAS token signature"]
    assert sign["status"] == 200 and len(sign["body"]["digest"]) == 44, sign
    identities = json.loads(d.sh(f"curl -sS --fail-with-body {MGMT} 'http://mgmt/identities?{API}'"))
    world.before["identities"] = sorted((i["moduleId"], i["generationId"]) for i in identities["identities"])
    assert "signer" in {i["moduleId"] for i in identities["identities"]}


def test_a_process_a_host_module_double_forks_dies_with_the_module(world: World) -> None:
    """Under the packaged unit (Delegate=yes), each host module runs in a cgroup of its own: a process that left
    the module's session and tree is killed when the module is removed, not left running as the module's user."""
    d = world.device
    # a user of its own: "signer" runs as nobody, and a module's uid is its own (409 otherwise)
    d.run("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "leaver", check=True)
    body = json.dumps({"name": "leaver", "imagePullPolicy": "never", "config": {
        "image": "/bin/sh", "createOptions": {"Cmd": ["-c", "setsid -f sleep 4242; exec sleep 600"],
                                              "User": "leaver"}}})
    d.run("curl", "-sS", "--fail-with-body", *MGMT.split(), "-H", "Content-Type: application/json", "-d", body,
          f"http://mgmt/modules?{API}", check=True)
    d.run("curl", "-sS", "--fail-with-body", *MGMT.split(), "-X", "POST",
          f"http://mgmt/modules/leaver/start?{API}", check=True)
    d.run("python3", "-c", COUNT_SLEEPS, "4242", "1", check=True, timeout=60)  # the double-forked one runs
    d.run("curl", "-sS", "--fail-with-body", *MGMT.split(), "-X", "DELETE", f"http://mgmt/modules/leaver?{API}",
          check=True)
    left = d.run("python3", "-c", COUNT_SLEEPS, "4242", "0", timeout=60).stdout.strip()
    assert left == "0", f"{left} process(es) the removed module double-forked still run"


def _create(d: Device, name: str, image: str, options: dict[str, object]) -> subprocess.CompletedProcess[str]:
    body = json.dumps({"name": name, "imagePullPolicy": "never", "config": {"image": image, "createOptions": options}})
    return d.run("curl", "-sS", "-w", "\n%{http_code}", *MGMT.split(), "-H", "Content-Type: application/json",
                 "-d", body, f"http://mgmt/modules?{API}")


def test_a_module_cannot_pass_for_a_service_nor_reach_its_state(world: World) -> None:
    """The attacks a deployment could try on a packaged device: run a module as a service's user (its socket would
    admit it, the service would trust it); as root, become a service's user and read its state; as any other user,
    connect to the keys socket."""
    d = world.device
    refused = _create(d, "as-identityd", "/bin/sh", {"User": "aziotid", "Cmd": ["-c", "sleep 1000"]})
    assert refused.stdout.rstrip().endswith("400"), refused.stdout
    assert "service account aziotid" in refused.stdout
    snoop = "setpriv --reuid aziotks --regid aziotks --clear-groups ls -A /var/lib/edgeward/keys 2>&1; echo SNOOP-DONE $?"
    # A root host module is refused while allow_elevated_docker_permissions is off (the default) ...
    rooted = _create(d, "snoop", "/bin/sh", {"Cmd": ["-c", f"{snoop}; sleep 1000"]})
    assert rooted.stdout.rstrip().endswith("422") and "allow_elevated_docker_permissions" in rooted.stdout, rooted
    # ... and where the operator allows it, it still cannot read another service's state.
    d.run("sed", "-i", "1i allow_elevated_docker_permissions = true", "/etc/aziot/config.toml", check=True)
    d.run("edgeward", "config", "apply", check=True, timeout=180)
    created = _create(d, "snoop", "/bin/sh", {"Cmd": ["-c", f"{snoop}; sleep 1000"]})
    assert created.stdout.rstrip().endswith("201"), created.stdout
    d.run("curl", "-sS", "--fail-with-body", *MGMT.split(), "-X", "POST", f"http://mgmt/modules/snoop/start?{API}",
          check=True)
    logs = d.run("python3", "-c", FOLLOW_LOGS, "snoop", "SNOOP-DONE", timeout=120).stdout
    assert "SNOOP-DONE 0" not in logs and "SNOOP-DONE" in logs, logs
    assert "Permission denied" in logs, logs
    d.run("curl", "-sS", "--fail-with-body", *MGMT.split(), "-X", "DELETE", f"http://mgmt/modules/snoop?{API}",
          check=True)
    other = d.run("setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "curl", "-sS",
                  "--unix-socket", "/run/edgeward/keyd.sock", "http://keyd/key/x?api-version=2020-09-01")
    assert other.returncode == 7, other  # connect(2) refused: not in the keys group (root got in above)


def test_config_apply_restarts_only_what_changed(world: World) -> None:
    d = world.device
    pids = {s: _main_pid(d, s) for s in ("keyd", "certd", "identityd", "edged")}
    d.run("/bin/sh", "-c", "cat >> /etc/aziot/config.toml", input="\n[aziot_max_requests]\ncertd = 20\n", check=True)
    out = d.run("edgeward", "config", "apply", check=True, timeout=180).stdout
    assert "certd.toml" in out
    after = {s: _main_pid(d, s) for s in pids}
    assert after["certd"] != pids["certd"] and after["certd"] != 0, (pids, after)
    for same in ("keyd", "identityd", "edged"):
        assert after[same] == pids[same], (same, pids, after)


def _fingerprint(d: Device) -> dict[str, object]:
    """What must survive an upgrade: the edge CA's certificate and key (by public key), module identities, the
    audit log's verification."""
    cert = json.loads(d.sh("curl -sS --fail-with-body --unix-socket /run/edgeward/certd.sock "
                           "'http://certd/certificates/aziot-edged-ca?api-version=2020-09-01'"))["pem"]
    handle = json.loads(d.sh("curl -sS --fail-with-body --unix-socket /run/edgeward/keyd.sock "
                             "'http://keyd/keypair/aziot-edged-ca?api-version=2020-09-01'"))["keyHandle"]
    point = d.sh("curl -sS --fail-with-body --unix-socket /run/edgeward/keyd.sock -H 'Content-Type: application/json' "
                 f"-d '{json.dumps({'keyHandle': handle})}' "
                 "'http://keyd/parameters/ec-point?api-version=2020-09-01'")
    identities = json.loads(d.sh(f"curl -sS --fail-with-body {MGMT} 'http://mgmt/identities?{API}'"))
    return {"cert": cert, "public": json.loads(point)["value"],
            "identities": sorted((i["moduleId"], i["generationId"]) for i in identities["identities"])}


def test_upgrade_keeps_keys_certificates_identities_and_the_audit_log(world: World) -> None:
    d = world.device
    before = _fingerprint(d)
    assert d.run("edgeward", "audit", "verify", timeout=120).returncode == 0
    old_pids = {s: _main_pid(d, s) for s in ("keyd", "certd", "identityd", "edged")}
    done = d.run("/bin/sh", "-c", f"apt-get install -y -q /root/{world.debs[1].name}", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0.1.0-2" in d.sh("dpkg-query -W -f '${Version}' edgeward")
    # what was running restarted on the new code
    assert _main_pid(d, "edged") not in (0, old_pids["edged"])
    assert _fingerprint(d) == before
    verify = d.run("edgeward", "audit", "verify", timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_remove_stops_everything_and_purge_deletes_the_state(world: World) -> None:
    d = world.device
    done = d.run("/bin/sh", "-c", "apt-get purge -y -q edgeward", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert d.run("test", "-e", "/var/lib/edgeward").returncode != 0
    assert d.run("test", "-e", "/etc/edgeward").returncode != 0
    assert d.run("test", "-e", "/run/edgeward/keyd.sock").returncode != 0
    assert "edgeward" not in d.sh("systemctl list-units --all --no-legend 'edgeward*'")
    leftover = d.sh("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done "
                    "| grep -e edgeward -e demo_module | grep -v -e grep -e '/proc/' || true")
    assert leftover == "", leftover
