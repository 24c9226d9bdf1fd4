"""A container module and its workload directory, on a real daemon and a real dockerd (review of session 11).

Root in a container is root on the host files bind-mounted into it. With its workload directory mounted read-write,
a module could fill Edgeward's run directory (a RAM tmpfs under /run on a device) and leave a regular file where its
socket is, and at the next start the daemon refused that path and exited: keys, certs, identities and every other
module down. The directory is now mounted read-only (a socket in a read-only bind still takes connections), and a
module's socket that cannot be bound fails that module's socket only, with a log line naming it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import textwrap
from pathlib import Path
from typing import Any

import pytest

from edgeward.runtime.engine import ENGINE_LABEL
from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.supervise import start_daemon, stop_daemon
from tests.fixtures.dockerd import TEST_IMAGE, Dockerd, container_results, host_python_binds
from tests.fixtures.modules import CLIENT_SCRIPT

pytestmark = pytest.mark.asyncio(loop_scope="session")
SIGN = {"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="}
SIGN_PATH = "/modules/{name}/genid/{genid}/sign?api-version=2019-01-30"

# What root in the container tries on its own workload directory before it signs (one RESULT line each).
PROBE = textwrap.dedent("""
    import errno, json, os, urllib.parse
    wl = urllib.parse.urlparse(os.environ["IOTEDGE_WORKLOADURI"]).path
    d = os.path.dirname(wl)
    def attempt(what, fn):
        try:
            fn()
            print("RESULT " + json.dumps({"status": what + " done"}), flush=True)
        except OSError as e:
            print("RESULT " + json.dumps({"status": what + " " + errno.errorcode[e.errno]}), flush=True)
    def fill():
        with open(d + "/fill", "wb") as f:
            f.write(b"\\0" * (1 << 20))
    def plant():
        os.rename(wl, d + "/aside.sock")
        with open(wl, "w") as f:
            f.write("not a socket")
    attempt("fill", fill)
    attempt("plant", plant)
""")


def _spec(name: str, code: str, calls: list[Any]) -> dict[str, Any]:
    return {"name": name, "type": "docker", "imagePullPolicy": "never", "config": {
        "settings": {"image": TEST_IMAGE, "createOptions": {
            "Cmd": ["/usr/bin/python3", "-c", code],
            "HostConfig": {"Mounts": host_python_binds(), "NetworkMode": "none"}}},
        "env": [{"key": "EDGEWARD_TEST_CALLS", "value": json.dumps(calls)}]}}


async def test_container_cannot_write_its_workload_dir_and_a_planted_file_stops_only_its_socket(
        public_dir: Path, dockerd: Dockerd) -> None:
    config = public_dir / "config.toml"
    config.write_text(f'[moby_runtime]\nuri = "{dockerd.uri}"\nnetwork = "none"\n[edgeward.runtime]\nengine = "docker"\n')
    run = public_dir / "run"
    log = public_dir / "daemon.log"
    args = ["run", "-c", str(config), "--state-dir", str(public_dir / "state"), "--run-dir", str(run)]
    sock = run / "mgmt" / "mgmt.sock"
    loop = asyncio.get_running_loop()
    proc = await loop.run_in_executor(None, lambda: start_daemon(args, log_path=log))
    try:
        mgmt = ManagementClient(sock)
        try:
            await mgmt.create_module(_spec("ctm", PROBE + CLIENT_SCRIPT, [["POST", "workload", SIGN_PATH, SIGN]]))
            await mgmt.create_module(_spec("other", "import time\ntime.sleep(3600)", []))
            await mgmt.action("ctm", "start")
            await mgmt.action("other", "start")
            fill, plant, sign = await container_results(dockerd, "ctm", timeout=60)
        finally:
            await mgmt.close()
        # Read-only: nothing lands in the run directory, the socket stays, and it still takes the module's calls.
        assert fill["status"] == "fill EROFS" and plant["status"] == "plant EROFS", (fill, plant)
        assert sign["status"] == 200, sign
        ctm_dir = run / "workload" / "ctm"
        assert sorted(p.name for p in ctm_dir.iterdir()) == ["workload.sock"]
        assert stat.S_ISSOCK((ctm_dir / "workload.sock").lstat().st_mode)
    finally:
        await loop.run_in_executor(None, stop_daemon, proc)

    # Whatever put a regular file there (root on the host, or a container created before the mount was read-only),
    # the next start serves everything else and leaves the file alone, naming the path in its log.
    planted = run / "workload" / "ctm" / "workload.sock"
    planted.unlink(missing_ok=True)
    planted.write_text("not a socket\n")
    proc = await loop.run_in_executor(None, lambda: start_daemon(args, log_path=log))
    try:
        mgmt = ManagementClient(sock)
        try:
            modules = await mgmt.list_modules()
            listed = {m["name"]: m["status"]["runtimeStatus"]["status"] for m in modules}
            assert listed == {"ctm": "running", "other": "running"}, listed
            # the operator sees it where module status is read, not only in the log
            said = {m["name"]: m["status"]["runtimeStatus"].get("description", "") for m in modules}
            assert "workload socket" in said["ctm"] and "not a socket" in said["ctm"], said
            assert said["other"] == "", said
        finally:
            await mgmt.close()
        assert planted.read_text() == "not a socket\n"
        with socket.socket(socket.AF_UNIX) as s:  # other's socket is served (a stale one would refuse this)
            s.connect(str(run / "workload" / "other" / "workload.sock"))
        text = log.read_text()
        assert f"workload socket of module ctm cannot be opened at {planted}" in text, text[-3000:]
    finally:
        await loop.run_in_executor(None, stop_daemon, proc)
        ids = dockerd.cli("ps", "-aq", "--filter", f"label={ENGINE_LABEL}").stdout.split()
        if ids:
            dockerd.cli("rm", "-f", *ids, check=False)
