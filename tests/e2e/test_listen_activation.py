"""[listen] with systemd's fd:// form: `edgeward run` serves the management API and IoT Edge's shared workload socket
on the sockets systemd passed (LISTEN_FDS / LISTEN_FDNAMES, by name or by fd number, as aziot's http-common reads
them), binds nothing of its own for them, and stops with a clear configuration error when a named socket was not
passed."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.supervise import stop_daemon
from tests.fixtures.modules import client_spec, logs_until

SIGN = {"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="}
SIGN_PATH = "/modules/{name}/genid/{genid}/sign?api-version=2022-08-03"

# Puts the passed listeners at fd 3, 4, ... and sets LISTEN_PID to this very process, which then becomes the daemon.
WRAPPER = (
    "import os, sys; fds = [int(f) for f in sys.argv[1].split(',')]; "
    "[os.dup2(fd, 3 + i) for i, fd in enumerate(fds)]; os.environ['LISTEN_PID'] = str(os.getpid()); "
    "os.environ['LISTEN_FDS'] = str(len(fds)); os.environ['LISTEN_FDNAMES'] = sys.argv[2]; "
    "sys.argv = ['edgeward'] + sys.argv[3:]; from edgeward.cli.entry import main; main()"
)


def _listener(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    os.chmod(path, 0o666)
    s.listen(64)
    return s


def _spawn(listeners: list[socket.socket], names: str, config: Path, base: Path) -> subprocess.Popen[bytes]:
    log = (base / "daemon.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-c", WRAPPER, ",".join(str(s.fileno()) for s in listeners), names, "run", "-c",
         str(config), "--state-dir", str(base / "state"), "--run-dir", str(base / "run")],
        pass_fds=tuple(s.fileno() for s in listeners), stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.asyncio(loop_scope="session")
async def test_run_serves_management_and_shared_workload_on_sockets_systemd_passed(public_dir: Path) -> None:
    base = public_dir / "activated"
    mgmt_path, shared_path = base / "sd" / "mgmt.sock", base / "sd" / "workload.sock"
    listeners = [_listener(mgmt_path), _listener(shared_path)]
    config = base / "config.toml"
    config.write_text('hostname = "edge-activated"\nallow_elevated_docker_permissions = true\n'  # root module
                      '[listen]\nmanagement_uri = "fd://edge.mgmt.socket"\n'
                      'workload_uri = "fd://4"\n[edgeward.runtime]\nengine = "process"\n')
    proc = _spawn(listeners, "edge.mgmt.socket:edge.workload.socket", config, base)
    for s in listeners:
        s.close()
    mgmt = ManagementClient(mgmt_path)
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while True:  # the socket accepts from the start (it is systemd's); answers once the daemon serves it
            try:
                await mgmt.list_modules()
                break
            except Exception:
                assert proc.poll() is None, (base / "daemon.log").read_text()[-3000:]
                assert asyncio.get_running_loop().time() < deadline, (base / "daemon.log").read_text()[-3000:]
                await asyncio.sleep(0.1)
        calls = [["POST", "workload", SIGN_PATH, SIGN], ["POST", "mgmt", SIGN_PATH, SIGN]]
        spec = client_spec("actmod", calls)
        spec["config"]["env"].append({"key": "IOTEDGE_MANAGEMENTURI", "value": f"unix://{shared_path}"})
        await mgmt.create_module(spec)
        await mgmt.action("actmod", "start")
        seen = await logs_until(mgmt, "actmod", b"DONE", timeout=60)
        assert seen.count(b'"status": 200') == 2, seen
        cli = ManagementClient(base / "run" / "mgmt" / "mgmt.sock")  # where Edgeward's CLI looks, served too
        try:
            assert [m["name"] for m in await cli.list_modules()] == ["actmod"]
        finally:
            await cli.close()
    finally:
        await mgmt.close()
        stop_daemon(proc)


def test_fd_uri_naming_a_socket_systemd_did_not_pass_is_a_configuration_error(public_dir: Path) -> None:
    base = public_dir / "activation-missing"
    listeners = [_listener(base / "sd" / "other.sock")]
    config = base / "config.toml"
    config.write_text('[listen]\nmanagement_uri = "fd://aziot-edged.mgmt.socket"\n[edgeward.runtime]\n'
                      'engine = "process"\n')
    proc = _spawn(listeners, "something.else", config, base)
    listeners[0].close()
    try:
        code = proc.wait(60)
    finally:
        stop_daemon(proc)
    out = " ".join((base / "daemon.log").read_text().split())
    assert code == 3, out
    assert ("listen.management_uri = 'fd://aziot-edged.mgmt.socket': systemd passed no such socket; passed: "
            "something.else (fd 3)") in out, out
    assert "Traceback" not in out
