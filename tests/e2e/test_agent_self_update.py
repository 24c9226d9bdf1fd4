"""The edge agent updating itself, as it deploys a new agent: `PUT /modules/edgeAgent?start=true` sent by the agent
on the management socket (its UpdateAndStartModuleAsync). aziot-edged answers 201 (ModuleDetails from the spec) and
replaces the agent afterwards, in a spawned task (edgelet-http-mgmt, module/delete_or_get_or_update.rs): the old
agent reads its answer. Edgeward replaced it first, so the agent's connection closed with no answer (contract
review 14, F6).

A real daemon whose edge agent is a host-process relay: the test's requests to the relay's socket arrive on the
management socket from the agent's own process, attested as the agent.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgeward.supervise import running_daemon
from tests.contract.relay import RELAY_SCRIPT, relay_agent_toml

API = "api-version=2022-08-03"
PROBLEM_SIGNS = ("Traceback", "internal error", "Logging error", "Exception ignored", "never retrieved",
                 "destroyed but it is pending")


@dataclass
class Device:
    base: Path
    log: Path
    mgmt: Path  # the management socket itself: calls on it come from the test, host root

    def relay(self, n: int) -> Path:
        return self.base / "relays" / f"agent{n}.sock"

    def problems(self) -> list[str]:
        return [line for line in self.log.read_text(errors="replace").splitlines()
                if any(sign in line for sign in PROBLEM_SIGNS)]


def _agent_env(n: int, base: Path) -> list[dict[str, str]]:
    return [{"key": "RELAY_1_AT", "value": str(base / "relays" / f"agent{n}.sock")},
            {"key": "RELAY_1_TO", "value": "IOTEDGE_MANAGEMENTURI"},
            {"key": "RELAY_ENV_OUT", "value": str(base / "relays" / f"agent{n}.env.json")},
            {"key": "AGENT_GENERATION", "value": str(n)}]


def _agent_spec(n: int, base: Path, image: str = sys.executable) -> dict[str, Any]:
    """The spec as the edge agent sends it: createOptions as a JSON string, the pull policy in its own casing."""
    return {"name": "edgeAgent", "type": "docker", "imagePullPolicy": "On-Create",
            "config": {"settings": {"image": image, "createOptions": json.dumps({"Cmd": ["-c", RELAY_SCRIPT]})},
                       "env": _agent_env(n, base)}}


@pytest.fixture
def device() -> Iterator[Device]:
    base = Path(f"/tmp/edgeward-selfupdate-{os.getpid()}-{time.monotonic_ns()}")
    (base / "relays").mkdir(parents=True, mode=0o700)
    os.chmod(base, 0o755)
    config = base / "config.toml"
    config.write_text(textwrap.dedent("""\
        hostname = "selfupdate-edge"
        allow_elevated_docker_permissions = true  # the agent (a host process) runs as the test's user, root
        """) + relay_agent_toml({e["key"]: e["value"] for e in _agent_env(1, base)}))
    log = base / "daemon.log"
    try:
        with running_daemon(["run", "-c", str(config), "--state-dir", str(base / "state"), "--run-dir",
                             str(base / "run")], log_path=log):
            device = Device(base, log, base / "run" / "mgmt" / "mgmt.sock")
            _answering(device.relay(1))
            yield device
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


class Connection:
    """One HTTP/1.1 connection, kept open until closed: the agent's client reads its answer, then closes."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(str(path))

    def call(self, method: str, target: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        self.send(method, target, body)
        return self.answer()

    def send(self, method: str, target: str, body: dict[str, Any] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {target} HTTP/1.1\r\nHost: mgmt.sock\r\nContent-Length: {len(data)}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + data)

    def answer(self) -> tuple[int, Any]:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed with no answer (got {buf[:200]!r})")
            buf += chunk
        raw_head, _, rest = buf.partition(b"\r\n\r\n")
        lines = raw_head.decode().split("\r\n")
        length = next(int(v) for k, _, v in (line.partition(":") for line in lines[1:])
                      if k.lower() == "content-length")
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed in the middle of the answer")
            rest += chunk
        return int(lines[0].split()[1]), json.loads(rest) if rest else None

    def close(self) -> None:
        self.sock.close()


def _call(path: Path, method: str, target: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    conn = Connection(path)
    try:
        return conn.call(method, target, body)
    finally:
        conn.close()


def _answering(relay: Path, timeout: float = 30.0) -> dict[str, Any]:
    """The agent behind `relay` is up and attested as the agent: its GET of itself, once it answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = _call(relay, "GET", f"/modules/edgeAgent?{API}")
            if status == 200:
                return dict(body)
        except OSError:
            pass
        assert time.monotonic() < deadline, f"no agent answers on {relay}"
        time.sleep(0.1)


def _env_of(details: dict[str, Any]) -> dict[str, str]:
    return {e["key"]: e["value"] for e in details["config"]["env"]}


def test_the_agent_updating_itself_reads_201_and_is_then_replaced(device: Device) -> None:
    spec = _agent_spec(2, device.base)
    conn = Connection(device.relay(1))
    try:
        status, body = conn.call("PUT", f"/modules/edgeAgent?{API}&start=true", spec)
    finally:
        conn.close()  # as the agent's client does once it has its answer
    # What aziot-edged answers: ModuleDetails::from_spec, before the update is done.
    assert status == 201, body
    assert body == {"id": "id", "name": "edgeAgent", "type": "docker", "config": spec["config"],
                    "status": {"runtimeStatus": {"status": "running"}}}
    # ... and then the agent is replaced by the one it asked for, attested as the agent.
    details = _answering(device.relay(2))
    assert _env_of(details)["AGENT_GENERATION"] == "2"
    assert details["status"]["runtimeStatus"] == {"status": "running"}
    env = json.loads((device.base / "relays" / "agent2.env.json").read_text())
    assert env["AGENT_GENERATION"] == "2" and env["IOTEDGE_MODULEID"] == "$edgeAgent"
    # Once: the old agent is gone, not restarted by the watchdog behind the update's back.
    status, listed = _call(device.mgmt, "GET", f"/modules?{API}")
    assert status == 200 and [m["name"] for m in listed["modules"]] == ["edgeAgent"]
    assert not device.problems(), device.problems()


def test_a_second_update_waits_for_the_agents_own_and_does_not_interleave(device: Device) -> None:
    conn = Connection(device.relay(1))
    root = Connection(device.mgmt)
    try:
        status, body = conn.call("PUT", f"/modules/edgeAgent?{API}&start=true", _agent_spec(2, device.base))
        assert status == 201, body
        # While the agent's update waits for the agent to close its connection, host root updates the agent too:
        # it waits for the module's lock, so the agent's update is done first, then root's, never both at once.
        root.send("PUT", f"/modules/edgeAgent?{API}&start=true", _agent_spec(3, device.base))
        time.sleep(0.5)
        conn.close()
        status, body = root.answer()
    finally:
        conn.close()
        root.close()
    assert status == 201, body
    assert _env_of(body)["AGENT_GENERATION"] == "3" and body["status"]["runtimeStatus"]["status"] == "running"
    details = _answering(device.relay(3))
    assert _env_of(details)["AGENT_GENERATION"] == "3"
    # The agent's own update was done (and whole) before root's began.
    log = device.log.read_text()
    replaced = log.index("module edgeAgent replaced itself")
    assert log.count("module edgeAgent created (") == 3 and log.rindex("module edgeAgent created (") > replaced, log
    assert not device.problems(), device.problems()


def test_the_agent_has_at_most_one_update_of_itself_pending(device: Device) -> None:
    """Found by h/brk14c F2: each PUT of itself by the agent was answered 201 and left a task behind, with no cap:
    101 of them in 0.42 s, then 101 stop/remove/create/start cycles of the agent, with root's restart of the agent
    stuck behind them. While one is pending, another is a 409."""
    first = Connection(device.relay(1))
    try:
        status, body = first.call("PUT", f"/modules/edgeAgent?{API}&start=true", _agent_spec(2, device.base))
        assert status == 201, body
        # the first one waits for this connection to close: meanwhile the agent asks again, on other connections
        answers = [_call(device.relay(1), "PUT", f"/modules/edgeAgent?{API}&start=true", _agent_spec(3, device.base))
                   for _ in range(5)]
        assert [s for s, _ in answers] == [409] * 5, answers
        assert "already" in answers[0][1]["message"], answers[0]
    finally:
        first.close()
    details = _answering(device.relay(2))
    assert _env_of(details)["AGENT_GENERATION"] == "2"
    assert device.log.read_text().count("module edgeAgent created (") == 2
    assert not device.problems(), device.problems()


def test_an_update_that_fails_after_the_answer_is_logged_audited_and_shown_and_the_agent_comes_back(
        device: Device) -> None:
    # An executable that is there when the update is checked and gone when the new agent is created.
    launcher = device.base / "agent-launcher"
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    launcher.chmod(stat.S_IRWXU)
    conn = Connection(device.relay(1))
    try:
        status, body = conn.call("PUT", f"/modules/edgeAgent?{API}&start=true",
                                 _agent_spec(2, device.base, str(launcher)))
        assert status == 201, body
        launcher.unlink()
    finally:
        conn.close()
    # The watchdog brings back the agent of the configuration; its status says why the update failed.
    deadline = time.monotonic() + 30
    while True:
        details = _answering(device.relay(1))
        said = details["status"]["runtimeStatus"].get("description", "")
        if "the update it asked for failed" in said:
            break
        assert time.monotonic() < deadline, details
        time.sleep(0.1)
    assert _env_of(details)["AGENT_GENERATION"] == "1" and details["status"]["runtimeStatus"]["status"] == "running"
    assert "failed after its answer" in device.log.read_text()
    audit = subprocess.run([sys.executable, "-m", "edgeward", "audit", "show", "--json", "--last", "100",
                            "--state-dir", str(device.base / "state")], capture_output=True, text=True, timeout=60,
                           check=True).stdout
    assert [r for r in json.loads(audit) if r["kind"] == "module.update_failed"], audit
    assert not device.problems(), device.problems()
    # A later update that succeeds clears it.
    conn = Connection(device.relay(1))
    try:
        status, _ = conn.call("PUT", f"/modules/edgeAgent?{API}&start=true", _agent_spec(2, device.base))
    finally:
        conn.close()
    assert status == 201
    assert "description" not in _answering(device.relay(2))["status"]["runtimeStatus"]
