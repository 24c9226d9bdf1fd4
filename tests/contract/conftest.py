"""One real daemon (`edgeward run`) for the contract suite, and the two callers the upstream contracts are written for.

The edge agent is the module the daemon starts from `[agent]`; a module is one the agent deploys. Each of them runs a
relay: it accepts on a private Unix socket of the test and forwards every byte to its own management or workload
socket, so what the test sends arrives from that module's process and is attested as that module — no shortcut.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import requests_unixsocket

from edgeward.supervise import running_daemon
from tests.contract.relay import RELAY_SCRIPT

AGENT = "edgeAgent"
MODULE = "contractmod"
# What the daemon's log shows when something went wrong inside it (asyncio's leftovers included).
PROBLEM_SIGNS = ("Traceback", "internal error", "Logging error", "Exception ignored", "never retrieved",
                 "destroyed but it is pending")
SACRIFICE = "sacrificial"  # what management calls on a named module act on (they may stop or remove it)



def relay_spec(name: str, relay_at: Path, to: str, pull_policy: str = "never") -> dict[str, object]:
    """A management API ModuleSpec, as the edge agent sends it, of a relay module."""
    return {"name": name, "type": "docker", "imagePullPolicy": pull_policy,
            "config": {"settings": {"image": sys.executable, "createOptions": {"Cmd": ["-c", RELAY_SCRIPT]}},
                       "env": [{"key": "RELAY_1_AT", "value": str(relay_at)}, {"key": "RELAY_1_TO", "value": to}]}}


def url_of(sock: Path) -> str:
    return "http+unix://" + quote(str(sock), safe="")


def wait_for(path: Path, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not come up within {timeout:.0f}s")
        time.sleep(0.05)


@dataclass
class ContractDevice:
    base: Path
    run_dir: Path
    log_path: Path
    agent: Path  # relay socket: arrives on the management socket as the edge agent
    module: Path  # relay socket: arrives on MODULE's workload socket as MODULE
    session: requests_unixsocket.Session

    @property
    def agent_url(self) -> str:
        return url_of(self.agent)

    @property
    def module_url(self) -> str:
        return url_of(self.module)

    def module_genid(self) -> str:
        r = self.session.get(self.agent_url + "/identities?api-version=2022-08-03", timeout=10)
        assert r.status_code == 200, r.text
        (identity,) = [i for i in r.json()["identities"] if i["moduleId"] == MODULE]
        return str(identity["generationId"])

    def ensure_sacrifice(self) -> None:
        """The module management calls act on exists (an earlier call may have removed it)."""
        r = self.session.get(self.agent_url + f"/modules/{SACRIFICE}?api-version=2022-08-03", timeout=10)
        if r.status_code == 404:
            spec = {"name": SACRIFICE, "type": "docker", "imagePullPolicy": "never",
                    "config": {"settings": {"image": sys.executable,
                                            "createOptions": {"Cmd": ["-c", "import time; time.sleep(3600)"]}}}}
            created = self.session.post(self.agent_url + "/modules?api-version=2022-08-03", json=spec, timeout=10)
            assert created.status_code == 201, created.text


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string


@pytest.fixture(scope="session")
def contract_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContractDevice]:
    base = tmp_path_factory.mktemp("contract")
    os.chmod(base, 0o755)
    relays = base / "relays"
    relays.mkdir(mode=0o700)
    agent_relay, module_relay = relays / "agent.sock", relays / "module.sock"
    config = base / "config.toml"
    config.write_text(textwrap.dedent(f"""\
        hostname = "contract-edge"
        allow_elevated_docker_permissions = true  # the agent and the modules run as root

        [agent]
        name = "{AGENT}"
        type = "docker"
        imagePullPolicy = "on-create"

        [agent.config]
        image = {_toml_string(sys.executable)}
        createOptions = {{ Cmd = ["-c", {_toml_string(RELAY_SCRIPT)}] }}

        [agent.env]
        RELAY_1_AT = {_toml_string(str(agent_relay))}
        RELAY_1_TO = "IOTEDGE_MANAGEMENTURI"
        """))
    log_path = base / "daemon.log"
    with running_daemon(["run", "-c", str(config), "--state-dir", str(base / "state"),
                         "--run-dir", str(base / "run")], log_path=log_path) as proc:
        session = requests_unixsocket.Session()
        try:
            wait_for(agent_relay, "the edge agent's relay")
            device = ContractDevice(base, base / "run", log_path, agent_relay, module_relay, session)
            # The agent deploys the module the workload contract is replayed as.
            for path in ("/identities", "/modules"):
                body = {"moduleId": MODULE, "managedBy": "IotEdge"} if path == "/identities" else \
                    relay_spec(MODULE, module_relay, "IOTEDGE_WORKLOADURI")
                r = session.post(device.agent_url + path + "?api-version=2022-08-03", json=body, timeout=20)
                assert r.status_code in (200, 201), (path, r.status_code, r.text)
            r = session.post(device.agent_url + f"/modules/{MODULE}/start?api-version=2022-08-03", timeout=20)
            assert r.status_code == 204, r.text
            wait_for(module_relay, "the module's relay")
            device.ensure_sacrifice()
            yield device
        finally:
            session.close()
        assert proc.poll() is None, "the daemon died during the contract suite"
        # Whatever the suite sent, the daemon logged no internal error and no traceback.
        problems = [line for line in log_path.read_text(errors="replace").splitlines()
                    if any(sign in line for sign in PROBLEM_SIGNS)]
        assert not problems, problems
