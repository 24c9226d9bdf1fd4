"""The access table over the real daemon: who may reach which socket and route, and the trace every refusal
leaves. Each test is an attack that succeeded before the table existed (issue 12, items 3, 9 and 10)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeward.access.table import SOCKETS, render_markdown
from edgeward.http import HttpError, UnixClient
from edgeward.runtime.engines.proccgroup import cgroup2_mount
from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.supervise import running_daemon
from tests.fixtures.dockerd import TEST_IMAGE, Dockerd
from tests.fixtures.modules import client_spec, elevated_defaults, logs_until
from tests.fixtures.peers import CLIENT
from tests.fixtures.processes import take_pid
from tests.fixtures.swtpm import Swtpm

EDGEWARD = [sys.executable, "-m", "edgeward"]
STRANGER = 4321  # a local user no principal names


def call_as(uid: int, sock: Path, method: str, path: str, body: dict[str, Any] | None = None,
            groups: tuple[int, ...] = ()) -> tuple[int, str]:
    """(status, body) as another local user; status 0 when the socket could not even be opened."""
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}",
           f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
           "/usr/bin/python3", "-c", CLIENT, str(sock), method, path]
    if body is not None:
        cmd.append(json.dumps(body))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        assert "PermissionError" in done.stderr or "Permission denied" in done.stderr, done.stderr
        return 0, done.stderr
    status, _, rest = done.stdout.partition(" ")
    return int(status), rest


def refusals_in_audit(state: Path) -> list[dict[str, Any]]:
    out = subprocess.run([*EDGEWARD, "audit", "show", "--json", "--last", "500", "--state-dir", str(state)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [r for r in json.loads(out) if r["kind"] == "access.refused"]


@pytest.fixture(scope="module")
def device() -> Iterator[dict[str, Path]]:
    base = Path(tempfile.mkdtemp(prefix="edgeward-access-"))  # other uids must reach the sockets' directories
    os.chmod(base, 0o755)
    state, run = base / "state", base / "run"
    log = base / "daemon.log"
    try:
        # Root host modules allowed (one test is about a module running as root, the others' modules are root).
        with running_daemon(["run", "-c", str(elevated_defaults(base)), "--state-dir", str(state), "--run-dir",
                             str(run)], log_path=log) as proc:
            for d in (run, run / "mgmt"):  # as aziot's DirectoryMode: the sockets' own modes and the table decide
                os.chmod(d, 0o755)
            yield {"state": state, "run": run, "log": log, "proc": Path(f"/proc/{proc.pid}")}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_readme_socket_table_is_the_enforced_one() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert render_markdown() in readme, "README's socket table differs from edgeward.access.table: re-render it"


def test_every_declared_route_is_covered_by_the_table() -> None:
    from edgeward.certs.routes import routes as certs
    from edgeward.identity.routes import routes as identity
    from edgeward.keys.routes import routes as keys
    from edgeward.runtime.mgmt_routes import routes as mgmt
    from edgeward.runtime.workload_routes import routes as workload
    from edgeward.tpm.routes import routes as tpm

    for name, table in (("keyd", keys), ("certd", certs), ("identityd", identity), ("tpmd", tpm),
                        ("mgmt", mgmt), ("workload", workload)):
        policy = SOCKETS[name]
        for method, path, _ in table.declared():
            kinds, _ = policy.kinds_for(method, path)
            assert kinds, f"{name} {method} {path} admits nobody"
        declared = {(m, p) for m, p, _ in table.declared()}
        stale = [(r.method, r.path) for r in policy.rules if (r.method, r.path) not in declared]
        assert not stale, f"rows for routes {name} does not serve: {stale}"


@pytest.mark.asyncio(loop_scope="session")
async def test_tpmd_serves_root_only_and_refuses_a_local_user_even_in_its_group(
        fresh_swtpm: Swtpm, public_dir: Path) -> None:
    tmp_path = public_dir
    config = tmp_path / "config.toml"
    config.write_text(f'[tpm]\ntcti = "{fresh_swtpm.tcti}"\n')
    run = tmp_path / "r"
    with running_daemon(["run", "-c", str(config), "--state-dir", str(tmp_path / "s"), "--run-dir", str(run)]):
        os.chmod(run, 0o755)
        sock = run / "tpmd.sock"
        st = sock.stat()
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_uid == os.getuid()
        q = "?api-version=2020-09-01"
        # A local user cannot open the socket at all ...
        assert call_as(STRANGER, sock, "GET", "/get_tpm_keys" + q)[0] == 0
        # ... and one who can (a member of its group) is refused by the guard on every route: no SAS tokens from
        # the DPS auth key, no replacing it.
        for method, path, body in (("GET", "/get_tpm_keys", None),
                                   ("POST", "/sign_with_auth_key", {"data": "aGVsbG8="}),
                                   ("POST", "/import_auth_key", {"key": "aGVsbG8="})):
            status, answer = call_as(STRANGER, sock, method, path + q, body, groups=(st.st_gid,))
            assert status == 401 and "row 'tpmd (every route)'" in answer, (path, status, answer)
        async with UnixClient(sock, "2020-09-01") as client:
            status, raw = await client.request("GET", "/get_tpm_keys")
        assert status == 200 and set(json.loads(raw)) == {"endorsement_key", "storage_root_key"}


async def _deploy(run: Path, spec: dict[str, Any], marker: bytes = b"DONE") -> str:
    mgmt = ManagementClient(run / "mgmt" / "mgmt.sock")
    try:
        await mgmt.create_module(spec)
        await mgmt.action(spec["name"], "start")
        return (await logs_until(mgmt, spec["name"], marker)).decode(errors="replace")
    finally:
        await mgmt.close()


def _results(logs: str) -> list[dict[str, Any]]:
    return [json.loads(line.split("RESULT ", 1)[1]) for line in logs.splitlines() if "RESULT " in line]


@pytest.mark.asyncio(loop_scope="session")
async def test_a_host_process_module_running_as_root_is_no_host_caller_of_keyd(device: dict[str, Path]) -> None:
    keyd = device["run"] / "keyd.sock"
    spec = client_spec("rooted", [["POST", "mgmt", "/keypair?api-version=2020-09-01", {"keyId": "stolen"}],
                                  ["GET", "mgmt", "/keypair/edgeward-local-ca?api-version=2020-09-01", None]])
    spec["config"]["env"].append({"key": "IOTEDGE_MANAGEMENTURI", "value": f"unix://{keyd}"})
    results = _results(await _deploy(device["run"], spec))
    assert len(results) == 2
    for r in results:
        assert r["status"] == 401 and "module rooted" in r["body"]["message"], r


def test_a_container_with_keyd_bind_mounted_is_no_host_root(device: dict[str, Path], dockerd: Dockerd) -> None:
    keyd = device["run"] / "keyd.sock"
    binds = [f"{p}:{p}:ro" for p in ("/usr", "/lib", "/lib64") if Path(p).exists()]
    done = dockerd.cli("run", "--rm", "--network", "none", *(x for b in binds for x in ("-v", b)),
                       "-v", f"{keyd}:/keyd.sock", TEST_IMAGE, "/usr/bin/python3", "-c", CLIENT, "/keyd.sock",
                       "POST", "/keypair?api-version=2020-09-01", json.dumps({"keyId": "from-a-container"}))
    status, _, body = done.stdout.partition(" ")
    assert int(status) == 401 and "container " in body, done.stdout


@pytest.mark.asyncio(loop_scope="session")
async def test_every_refusal_is_audited_and_logged_with_a_rate_limit(device: dict[str, Path]) -> None:
    run, state = device["run"], device["state"]
    before = len(refusals_in_audit(state))
    await _deploy(run, client_spec("victim", []))
    # 1. a module signing as another module (on its own socket)
    sign = {"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="}
    nosy = _results(await _deploy(run, client_spec(
        "nosy", [["POST", "workload", "/modules/victim/genid/x/sign?api-version=2019-01-30", sign]])))
    assert nosy[0]["status"] == 403
    # 2. a host process signing as a module on the module's socket
    async with UnixClient(run / "workload" / "victim" / "workload.sock", "2019-01-30") as client:
        with pytest.raises(HttpError):
            await client.request("POST", "/modules/victim/genid/x/sign", sign)
    # 3. a local user on the management socket (0666), and on the keys and identity sockets (0660) as a member of
    # their group who is no principal
    group = ((run / "keyd.sock").stat().st_gid,)
    keypair = ("POST", "/keypair?api-version=2020-09-01", {"keyId": "k"})
    assert call_as(STRANGER, run / "mgmt" / "mgmt.sock", "GET", "/modules?api-version=2022-08-03")[0] == 403
    assert call_as(STRANGER, run / "keyd.sock", *keypair)[0] == 0  # outside the group it cannot even connect
    assert call_as(STRANGER, run / "keyd.sock", *keypair, groups=group)[0] == 401
    assert call_as(STRANGER, run / "identityd.sock", "GET", "/identities/identity?api-version=2021-12-01",
                   groups=group)[0] == 401
    # Each is one audit record naming the caller, the route and the refusing step, and one log line.
    records = refusals_in_audit(state)[before:]
    seen = {(r["detail"]["service"], r["detail"]["route"], r["detail"]["step"]) for r in records}
    assert ("workload", "POST /modules/{name}/genid/{genid}/sign", "registration_for") in seen, records
    assert ("workload", "POST /modules/{name}/genid/{genid}/sign", "container_of") in seen, records
    assert ("mgmt", "GET /modules", "container_of") in seen, records
    assert ("keyd", "POST /keypair", "policy") in seen, records
    assert ("identityd", "GET /identities/identity", "policy") in seen, records
    stranger = [r for r in records if r["detail"]["uid"] == STRANGER]
    assert all(r["detail"]["pid"] > 0 and r["detail"]["caller"] == "host" for r in stranger)
    assert next(r for r in records if r["detail"]["step"] == "registration_for")["module"] == "nosy"
    log = device["log"].read_text()
    assert log.count("refused ") >= 5 and "refused GET /modules on mgmt: pid" in log
    # A flood of the same refusal is recorded a bounded number of times, and counted, not lost.
    for _ in range(12):
        call_as(STRANGER, run / "keyd.sock", *keypair, groups=group)
    flood = [r for r in refusals_in_audit(state)[before:]
             if r["detail"]["service"] == "keyd" and r["detail"]["uid"] == STRANGER]
    assert 1 <= len(flood) <= 5, len(flood)


# A stdlib client that asks the same refused route `n` times on one socket, one connection each.
REPEAT_CLIENT = textwrap.dedent("""
    import http.client, socket, sys
    class C(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(sys.argv[1])
    for _ in range(int(sys.argv[3])):
        c = C("mgmt"); c.request("GET", sys.argv[2]); r = c.getresponse(); r.read(); c.close()
    print(r.status)
""")


def _in_own_namespaces(uid: int, sock: Path, path: str, n: int) -> str:
    """`n` requests from `uid` in fresh user, pid and mount namespaces (unprivileged: any local user may)."""
    done = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "unshare", "-Urpf",
                           "--mount-proc", "/usr/bin/python3", "-c", REPEAT_CLIENT, str(sock), path, str(n)],
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_a_local_user_in_namespaces_of_its_own_cannot_hide_another_users_refusal(device: dict[str, Path]) -> None:
    """Break-this review, session 12 (a01): such a caller is "elsewhere" (no host caller, no module's); uid 4444
    spent the one shared "elsewhere" budget and uid 1000's refusal on the same route, a moment later and from
    namespaces of its own too, left no record. The kernel still names each one's uid."""
    run, state = device["run"], device["state"]
    before = len(refusals_in_audit(state))
    path = "/systeminfo?api-version=2022-08-03"
    assert _in_own_namespaces(4444, run / "mgmt" / "mgmt.sock", path, 60) == "403"
    assert _in_own_namespaces(1000, run / "mgmt" / "mgmt.sock", path, 1) == "403"
    records = [r for r in refusals_in_audit(state)[before:] if r["detail"]["route"] == "GET /systeminfo"]
    assert {r["detail"]["caller"] for r in records} == {"unattributed"}, records
    assert 1 <= sum(r["detail"]["uid"] == 4444 for r in records) <= 10, records
    assert [r for r in records if r["detail"]["uid"] == 1000], records


def test_a_named_keys_principal_without_idtype_is_refused_at_start(tmp_path: Path) -> None:
    """Such an entry would be an identity daemon: the device's and every module's key handles, and with them
    their SAS keys (a break found by review: a principal meant for `mod-*` keys minted the edge agent's tokens)."""
    config = tmp_path / "config.toml"
    config.write_text('[[principal]]\nuid = 1000\nname = "alice"\nkeys = ["mod-*"]\ncerts = ["mod-*"]\n')
    done = subprocess.run([*EDGEWARD, "run", "-c", str(config), "--state-dir", str(tmp_path / "s"),
                           "--run-dir", str(tmp_path / "r")], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "principal[0].idtype" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_an_identity_principal_reaches_keyd_to_sign_with_the_handles_it_is_given(public_dir: Path) -> None:
    config = public_dir / "config.toml"
    config.write_text('[[principal]]\nuid = 3005\nname = "agent"\nidtype = ["local"]\n')
    run = public_dir / "r"
    with running_daemon(["run", "-c", str(config), "--state-dir", str(public_dir / "s"), "--run-dir", str(run)]):
        os.chmod(run, 0o755)
        sock = run / "keyd.sock"
        body = {"keyHandle": "sr=e30=&sig=AAAA", "algorithm": "HMAC-SHA256", "parameters": {"message": "eA=="}}
        for uid, refused_by in ((3005, "invalid key handle"), (STRANGER, "row 'keyd (every route)'")):
            status, answer = call_as(uid, sock, "POST", "/sign?api-version=2020-09-01", body,
                                     groups=(sock.stat().st_gid,))
            assert status == 401 and refused_by in answer, (uid, answer)


# A local user connects, hands the connection to a child and exits; a root process then gets its pid.
PID_REUSE_CLIENT = textwrap.dedent("""
    import os, socket, sys, time
    path, go, body = sys.argv[1], sys.argv[2], sys.argv[3].encode()
    s = socket.socket(socket.AF_UNIX); s.connect(path)
    if os.fork() == 0:
        while not os.path.exists(go):
            time.sleep(0.01)
        s.sendall(b"POST /keypair?api-version=2020-09-01 HTTP/1.1\\r\\nHost: k\\r\\nContent-Type: application/json\\r\\n"
                  + b"Content-Length: " + str(len(body)).encode() + b"\\r\\n\\r\\n" + body)
        print(s.recv(65536).decode(errors="replace"), flush=True)
        os._exit(0)
    print(os.getpid(), flush=True)
    os._exit(0)
""")


def test_a_recycled_pid_does_not_lend_its_new_owner_to_an_old_connection(device: dict[str, Path]) -> None:
    """Found by review: a connection's peer was identified at its first request, so a process started later with
    the connector's pid was taken for the caller. Here the connector is root in a mount namespace of its own (no
    host caller); the pid's new owner is root on the host."""
    keyd = device["run"] / "keyd.sock"
    go = device["run"].parent / "go-recycled"
    client = subprocess.Popen(["unshare", "--mount", "/usr/bin/python3", "-c", PID_REUSE_CLIENT, str(keyd), str(go),
                               json.dumps({"keyId": "stolen-by-reuse"})], stdout=subprocess.PIPE)
    assert client.stdout is not None
    connector = int(client.stdout.readline())
    client.wait()
    # Start times are in clock ticks (10 ms): a real attacker needs a whole pid wrap (tens of thousands of forks,
    # far longer) to get the pid back; ns_last_pid does it at once, so wait a few ticks as the wrap would.
    time.sleep(0.05)
    holder = None
    try:
        holder = take_pid(connector)
        if holder is None:
            pytest.skip("could not recycle the pid on this busy machine")
        go.touch()
        answer = client.communicate(timeout=30)[0].decode()
    finally:
        go.touch()
        if holder is not None:
            holder.kill()
            holder.wait()
    assert " 401 " in answer.splitlines()[0] and "pid was reused" in answer, answer


def test_a_pid_taken_while_the_daemon_is_slow_to_accept_is_not_the_connector(device: dict[str, Path]) -> None:
    """Found by review (brk14a F3): a connection was pinned to whoever held its pid when the daemon accepted it,
    checked against the accept time. A connector that hands its connection over and exits while the connection waits
    in the listen queue (the daemon stopped here stands in for a busy loop) leaves a pid that a later process takes
    before the accept: it was taken for the caller (here: root on the host, for a connector in namespaces of its
    own). The connection is pinned to the process that called connect() (SO_PEERPIDFD, Linux >= 6.5)."""
    daemon = int(device["proc"].name)
    keyd = device["run"] / "keyd.sock"
    go = device["run"].parent / "go-before-accept"
    holder = None
    os.kill(daemon, signal.SIGSTOP)  # the daemon accepts nothing for now: the connection waits in the listen queue
    try:
        client = subprocess.Popen(["unshare", "--mount", "/usr/bin/python3", "-c", PID_REUSE_CLIENT, str(keyd),
                                   str(go), json.dumps({"keyId": "stolen-before-accept"})], stdout=subprocess.PIPE)
        assert client.stdout is not None
        connector = int(client.stdout.readline())
        client.wait()
        holder = take_pid(connector)
    finally:
        os.kill(daemon, signal.SIGCONT)
    try:
        if holder is None:
            pytest.skip("could not recycle the pid on this busy machine")
        go.touch()
        answer = client.communicate(timeout=30)[0].decode()
    finally:
        go.touch()
        if holder is not None:
            holder.kill()
            holder.wait()
    assert " 401 " in answer.splitlines()[0] and "opened the connection, has exited" in answer, answer


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


ESCAPING_MODULE = textwrap.dedent("""
    import http.client, json, os, socket, sys, time, urllib.parse
    path = urllib.parse.urlparse(os.environ["IOTEDGE_WORKLOADURI"]).path
    name, gen = os.environ["IOTEDGE_MODULEID"], os.environ["IOTEDGE_MODULEGENERATIONID"]
    out = os.environ["EDGEWARD_TEST_OUT"]
    class C(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(path)
    if os.fork() == 0:
        if os.fork() == 0:  # the grandchild leaves the module's session and process tree
            os.setsid()
            c = C("localhost")
            for _ in range(300):
                c.request("POST", f"/modules/{name}/genid/{gen}/sign?api-version=2019-01-30",
                          body=json.dumps({"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="}),
                          headers={"Content-Type": "application/json"})
                r = c.getresponse(); r.read()
                with open(out, "a") as f:
                    f.write(f"{os.getpid()} {r.status}\\n")
                time.sleep(0.1)
            os._exit(0)
        os._exit(0)
    print("DONE", flush=True)
    time.sleep(3600)
""")


@pytest.mark.asyncio(loop_scope="session")
async def test_a_process_a_module_left_behind_loses_its_identity_when_the_module_stops(
        device: dict[str, Path], tmp_path: Path) -> None:
    """Found by review: a connection attested once kept its module's identity after the module was stopped and
    removed, for a process that had left the module's tree."""
    out = tmp_path / "signs"
    spec = {"name": "escaper", "imagePullPolicy": "never",
            "config": {"settings": {"image": sys.executable, "createOptions": {"Cmd": ["-c", ESCAPING_MODULE]}},
                       "env": [{"key": "EDGEWARD_TEST_OUT", "value": str(out)}]}}
    await _deploy(device["run"], spec)
    deadline = time.monotonic() + 20
    while (not out.exists() or " 200" not in out.read_text()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    pid = int(out.read_text().split()[0])
    try:
        mgmt = ManagementClient(device["run"] / "mgmt" / "mgmt.sock")
        try:
            await mgmt.action("escaper", "stop")
            await mgmt.delete_module("escaper")
        finally:
            await mgmt.close()
        seen = len(out.read_text().splitlines())
        while (len(out.read_text().splitlines()) < seen + 3 and _alive(pid)
               and time.monotonic() < deadline + 20):
            await asyncio.sleep(0.05)
        after = out.read_text().splitlines()[seen:]
        assert all(line.split()[1] == "403" for line in after), after
        if cgroup2_mount() is not None and os.geteuid() == 0:
            # Where the daemon can make a cgroup per module, the process died with the module instead.
            assert not _alive(pid), "a process that left the module's tree outlived the module"
        else:
            assert after, "the process that left the module's tree made no call after the module stopped"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
