"""Attacks on the integrity checks of host-process modules, against the real runtime over its real sockets:
a binary rewritten in place with its mtime put back (the digest cache must not vouch for it, before or after a
restart), and a sandboxed module without a User reaching for the key material and keyd."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeward import digest
from edgeward.attest.measure import measure
from edgeward.config.problems import ConfigError, Problems
from edgeward.digest import file_digest
from edgeward.runtime.compose import make_engine
from edgeward.runtime.engine import EngineError, LogOptions, ModuleSpec
from edgeward.runtime.engines import proclaunch
from edgeward.runtime.engines.process import DEFAULT_SANDBOX_UID_BASE, ProcessEngine
from edgeward.runtime.engines.proclaunch import plan_launch
from edgeward.runtime.mgmt_client import ManagementClient
from edgeward.runtime.registry import Registration
from edgeward.runtime.settings import parse_runtime_settings
from tests.fixtures.modules import CLIENT_SCRIPT, client_spec, module_results
from tests.fixtures.runtime import RuntimeEnv, serve_runtime

SIGN = {"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="}
SIGN_CALL = ["POST", "workload", "/modules/{name}/genid/{genid}/sign?api-version=2019-01-30", SIGN]
# The system interpreter: other uids can run it (the venv's may sit under a directory only root may enter).
SYSTEM_PYTHON = str(Path("/usr/bin/python3").resolve())
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dedicated sandbox uids need root")
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


def _engine(base: Path, **kwargs: Any) -> ProcessEngine:
    """The attacks rewrite binaries of modules that run as root (the device allows it: elevated permissions on)."""
    return ProcessEngine(base / "state" / "runtime" / "processes", stop_timeout=2.0, backoff_base=0.05,
                         backoff_cap=0.5, **{"allow_elevated": True, **kwargs})


@pytest.fixture
async def rt(request: pytest.FixtureRequest, public_dir: Path) -> AsyncIterator[RuntimeEnv]:
    doc = {"hostname": "edge1", "edgeward": {"integrity": {"period_seconds": 3600}}}  # passes: on events, by hand
    async with serve_runtime(request, public_dir, _engine(public_dir), doc) as env:
        yield env


def _script_module(path: Path, version: bytes) -> None:
    """An executable Python script that says which version of its code runs, then is the test client."""
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"#!" + SYSTEM_PYTHON.encode() + b"\nprint('VERSION " + version + b"', flush=True)\n"
                     + CLIENT_SCRIPT.encode())
    path.chmod(0o755)


def _rewrite_in_place(path: Path, old: bytes, new: bytes) -> None:
    """What a writer of the file does to hide: same inode, same size, mtime (and atime) put back."""
    assert len(old) == len(new)
    before = path.stat()
    data = path.read_bytes()
    at = data.index(old)
    with path.open("r+b") as f:
        f.seek(at)
        f.write(new)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert path.read_bytes() != data


async def _run(rt: RuntimeEnv, name: str, run: int) -> tuple[list[dict[str, Any]], bytes]:
    """The RESULT lines and the whole output of the module's `run`-th run (0: the first): its log history holds
    every run, each ending with DONE."""
    runs: list[list[dict[str, Any]]] = [[]]
    said: list[bytes] = [b""]
    buffer = b""
    async with asyncio.timeout(20):
        async for chunk in rt.parts.engine.logs(name, LogOptions(follow=True)):
            if chunk.stream != 1:
                continue
            buffer += chunk.data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                said[-1] += line + b"\n"
                if line.startswith(b"RESULT "):
                    runs[-1].append(json.loads(line[7:]))
                elif line.strip() == b"DONE":
                    if len(runs) == run + 1:
                        return runs[run], said[run]
                    runs.append([])
                    said.append(b"")
    raise AssertionError(f"{name}'s logs ended before its run {run} was done: {said}")


def test_the_digest_cache_sees_a_rewrite_in_place_with_mtime_put_back(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache's own promise: an entry it holds is not returned for changed bytes (stat fields put back)."""
    monkeypatch.setattr(digest, "_SETTLE_NS", 0, raising=False)  # cache even a file written just now
    target = tmp_path / "bin"
    target.write_bytes(b"original code " * 1000)
    first = file_digest(target)
    assert first in digest._digests.values()  # the next reading is a cache hit
    _rewrite_in_place(target, b"original", b"implant!")
    assert file_digest(target) != first


def test_a_file_changed_just_now_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second change within the file system's clock tick could leave every stat field as it was, so a digest
    of a file changed moments ago is never kept: the next reading reads the bytes again."""
    monkeypatch.setattr(digest, "_SETTLE_NS", 3600 * 10**9, raising=False)  # "moments": however slow this runs
    target = tmp_path / "bin"
    target.write_bytes(b"fresh code " * 1000)
    fresh = file_digest(target)
    assert fresh not in digest._digests.values()


async def test_binary_rewritten_in_place_with_mtime_put_back_is_found_and_its_calls_refused(
        rt: RuntimeEnv, mgmt: ManagementClient) -> None:
    script = rt.base / "bin" / "sensor.py"
    _script_module(script, b"original")
    go = rt.base / "go-sensor"
    await mgmt.create_module(client_spec("sensor", [SIGN_CALL], image=str(script), go_file=str(go)))
    await mgmt.action("sensor", "start")
    await module_results(rt.parts.engine, "sensor", until=b"WAITING")
    assert await rt.parts.monitor.check() == []

    _rewrite_in_place(script, b"VERSION original", b"VERSION implant!")
    findings = await rt.parts.monitor.check()
    assert [(f.kind, f.module) for f in findings] == [("binary_changed", "sensor")]
    assert rt.parts.audit.records()[-1].kind == "integrity.binary_changed"
    go.touch()
    (refused,), _ = await _run(rt, "sensor", 0)
    assert refused["status"] == 403 and "measure" in refused["body"]["message"], refused

    # Restarted (as the edge agent or the watchdog would), it runs the implant: its calls are still refused.
    await mgmt.action("sensor", "restart")
    (after_restart,), said = await _run(rt, "sensor", 1)
    assert b"VERSION implant!" in said
    assert after_restart["status"] == 403 and "measure" in after_restart["body"]["message"], after_restart


@pytest.mark.parametrize("kind", ["script", "elf"])
async def test_module_restarted_on_a_binary_rewritten_while_stopped_is_refused_at_its_first_call(
        rt: RuntimeEnv, mgmt: ManagementClient, kind: str) -> None:
    """No monitor pass in between (its period is an hour): the start itself must bring the change to light."""
    name = f"restarted-{kind}"
    if kind == "script":
        binary = rt.base / "bin" / f"{name}.py"
        _script_module(binary, b"original")
        spec = client_spec(name, [SIGN_CALL], image=str(binary))
        old, new = b"VERSION original", b"VERSION implant!"
    else:  # a running ELF binary cannot be written (ETXTBSY): the attacker waits for it to stop
        binary = rt.base / "bin" / f"{name}-python"
        binary.parent.mkdir(exist_ok=True)
        shutil.copy2(SYSTEM_PYTHON, binary)
        spec = client_spec(name, [SIGN_CALL], image=str(binary))
        old, new = b".gnu_debuglink\0", b".gnu_debuglinx\0"  # a section name: never loaded, it still runs
        assert binary.read_bytes().count(old) == 1
    await mgmt.create_module(spec)
    await mgmt.action(name, "start")
    (first,), _ = await _run(rt, name, 0)
    assert first["status"] == 200, first
    assert await rt.parts.monitor.check() == []
    await mgmt.action(name, "stop")

    _rewrite_in_place(binary, old, new)
    seen = rt.parts.audit.records()[-1].seq
    await mgmt.action(name, "start")
    (second,), _ = await _run(rt, name, 1)
    assert second["status"] == 403 and "measure" in second["body"]["message"], second
    # The start woke the monitor: the finding is in the audit log without anyone asking for a pass.
    async with asyncio.timeout(10):
        while not any(r.kind == "integrity.binary_changed" and r.module == name
                      for r in rt.parts.audit.records(since=seen)):
            await asyncio.sleep(0.05)


async def test_supervisor_restart_on_changed_code_stays_flagged_after_the_file_is_put_back(
        public_dir: Path) -> None:
    """The engine restarts a crashed module on its own; the file is changed for that restart and put back right
    after. The running process is the implant, whatever the file says now."""
    engine = _engine(public_dir)
    script = public_dir / "bin" / "crasher.py"
    _script_module(script, b"original")
    try:
        status = await engine.create(ModuleSpec("crasher", str(script), restart_policy="always",
                                                env={"EDGEWARD_TEST_CALLS": "[]"}))
        reg = Registration("crasher", "process", status.engine_id, str(script), status.image_id, "gen1")
        events = engine.events()
        started = await engine.start("crasher")
        assert started.pid is not None
        assert (await measure(engine, reg)).ok

        _rewrite_in_place(script, b"VERSION original", b"VERSION implant!")
        os.kill(started.pid, signal.SIGKILL)
        async with asyncio.timeout(10):
            async for event in events:
                if event.action == "restart":
                    break
            async for chunk in engine.logs("crasher", LogOptions(follow=True)):
                if b"VERSION implant!" in chunk.data:
                    break  # the implant runs ...
        _rewrite_in_place(script, b"VERSION implant!", b"VERSION original")
        assert file_digest(script) == reg.image_id  # ... and the file is clean again
        result = await measure(engine, reg)
        assert not result.ok and result.kind == "binary_changed", result
    finally:
        await engine.close()


async def test_module_whose_file_was_written_after_its_start_measurement_stays_flagged(public_dir: Path) -> None:
    """The window between the measurement before a start and the moment the code is read: an implant written in
    place there and taken out again leaves a clean file behind. The measured file is held open from before the
    start, so the write shows on it for as long as the process runs."""
    engine = _engine(public_dir)
    script = public_dir / "bin" / "window.py"
    _script_module(script, b"original")
    try:
        status = await engine.create(ModuleSpec("window", str(script), env={"EDGEWARD_TEST_CALLS": "[]"}))
        reg = Registration("window", "process", status.engine_id, str(script), status.image_id, "gen1")
        await engine.start("window")
        assert (await measure(engine, reg)).ok
        _rewrite_in_place(script, b"VERSION original", b"VERSION implant!")
        _rewrite_in_place(script, b"VERSION implant!", b"VERSION original")
        assert file_digest(script) == reg.image_id  # clean again, same inode, same mtime
        result = await measure(engine, reg)
        assert not result.ok and result.kind == "binary_changed" and "written since" in (result.finding or "")
        await engine.restart("window")  # a start on the clean file clears it
        assert (await measure(engine, reg)).ok
    finally:
        await engine.close()


# -- sandboxed modules without a User -------------------------------------------------------------------------
THIEF = textwrap.dedent("""
    import http.client, json, os, socket, urllib.parse
    def report(what, status, body):
        print("RESULT " + json.dumps({"what": what, "status": status, "body": body}), flush=True)
    class C(http.client.HTTPConnection):
        def __init__(self, path):
            super().__init__("localhost"); self.path = path
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(self.path)
    def call(what, sock, method, path, body=None):
        try:
            c = C(sock)
            c.request(method, path, body=json.dumps(body) if body is not None else None,
                      headers={"Content-Type": "application/json"} if body is not None else {})
            r = c.getresponse(); raw = r.read().decode()
            report(what, r.status, raw)
        except Exception as e:
            report(what, 0, repr(e))
    report("uid", os.getuid(), str(os.getgid()))
    name, gen = os.environ["IOTEDGE_MODULEID"], os.environ["IOTEDGE_MODULEGENERATIONID"]
    own = urllib.parse.urlparse(os.environ["IOTEDGE_WORKLOADURI"]).path
    call("sign", own, "POST", f"/modules/{name}/genid/{gen}/sign?api-version=2019-01-30",
         {"keyId": "primary", "algo": "HMACSHA256", "data": "aGk="})  # (the module master key exists from here on)
    try:
        with open(os.environ["THIEF_MASTER_KEY"], "rb") as f:
            report("master-key", 1, f.read().hex())
    except OSError as e:
        report("master-key", 0, repr(e))
    keyd = os.environ["THIEF_KEYD"]
    call("keyd-create", keyd, "POST", "/key?api-version=2020-09-01", {"keyId": "stolen", "usage": "derive"})
    call("keyd-load", keyd, "GET", "/key/edgeward-identity-module-master?api-version=2020-09-01")
    try:
        report("run-dir", 1, sorted(os.listdir(os.environ["THIEF_RUN_DIR"])))
    except OSError as e:
        report("run-dir", 0, repr(e))
    print("DONE", flush=True)
    import time; time.sleep(3600)
""")


@pytest.fixture
def device_dir() -> Iterator[Path]:
    """Like `public_dir`, but outside /tmp, as a device's state and run directories are: a sandbox has a /tmp of
    its own, which would hide everything under the host's /tmp and prove nothing."""
    d = Path(tempfile.mkdtemp(prefix="edgeward-attack-", dir="/var/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@needs_root
@needs_bwrap
async def test_sandboxed_module_without_user_reaches_neither_the_master_key_nor_keyd_but_signs(
        request: pytest.FixtureRequest, device_dir: Path) -> None:
    # Edgeward's state and run directories, as the runtime passes them (the keys service's are under base/keys
    # in these fixtures, where a device has them in the same state and run directories).
    hidden = (device_dir / "state", device_dir / "run", device_dir / "keys")
    async with serve_runtime(request, device_dir, _engine(device_dir, hidden=hidden, allow_elevated=False),
                             {"hostname": "edge1"}) as rt:
        master_key = rt.base / "keys" / "state" / "keys" / "master-key"
        assert master_key.is_file()
        keyd = rt.certs_env.keys_env.socket
        assert keyd.exists()
        mgmt = ManagementClient(rt.mgmt_socket)
        try:
            await mgmt.create_module({"name": "boxed", "type": "docker", "imagePullPolicy": "never", "config": {
                "settings": {"image": SYSTEM_PYTHON, "createOptions": {"Cmd": ["-c", THIEF], "Sandbox": True}},
                "env": [{"key": "THIEF_MASTER_KEY", "value": str(master_key)},
                        {"key": "THIEF_KEYD", "value": str(keyd)},
                        {"key": "THIEF_RUN_DIR", "value": str(rt.settings.run_dir)}]}})
            await mgmt.action("boxed", "start")
            results = {r["what"]: r for r in await module_results(rt.parts.engine, "boxed")}
        finally:
            await mgmt.close()
        assert results["uid"]["status"] >= DEFAULT_SANDBOX_UID_BASE, results["uid"]
        assert results["master-key"]["status"] == 0, results["master-key"]
        assert results["keyd-create"]["status"] != 200, results["keyd-create"]
        assert results["keyd-load"]["status"] != 200, results["keyd-load"]
        # Of Edgeward's run directory it sees only the way to its own workload socket.
        assert results["run-dir"] == {"what": "run-dir", "status": 1, "body": ["workload"]}, results["run-dir"]
        sign = results["sign"]
        assert sign["status"] == 200 and "digest" in json.loads(sign["body"]), sign


@needs_root
@needs_bwrap
async def test_each_sandboxed_module_gets_a_uid_of_its_own_and_keeps_it_when_recreated(tmp_path: Path) -> None:
    engine = ProcessEngine(tmp_path / "state", stop_timeout=2.0, sandbox_uid_base=1_950_000_000)

    def sandboxed(name: str, user: str | None = None) -> ModuleSpec:
        options: dict[str, Any] = {"Sandbox": True, "Cmd": ["-c", "echo ready; exec sleep 60"]}
        if user is not None:
            options["User"] = user
        return ModuleSpec(name=name, image="/bin/sh", create_options=options)

    async def uid_of(name: str) -> int:
        status = await engine.start(name)
        assert status.pid is not None
        async with asyncio.timeout(10):  # bubblewrap (the supervised pid) runs as the module's uid
            async for chunk in engine.logs(name, LogOptions(follow=True)):
                if b"ready" in chunk.data:
                    break
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{status.pid}/status").read_text().splitlines())
        uids = set(fields["Uid"].split())
        assert len(uids) == 1 and set(fields["Gid"].split()) == uids and fields["Groups"].split() == []
        await engine.stop(name, timeout=2.0)
        return int(uids.pop())

    try:
        for name in ("a", "b"):
            await engine.create(sandboxed(name))
        await engine.create(sandboxed("explicit", user="65534:65534"))
        a, b = await uid_of("a"), await uid_of("b")
        assert a != b and {a, b} <= set(range(1_950_000_000, 1_950_000_000 + 65536))
        assert await uid_of("explicit") == 65534  # a User given is a User kept
        await engine.remove("a")
        await engine.create(sandboxed("c"))
        await engine.create(sandboxed("a"))
        c, again = await uid_of("c"), await uid_of("a")
        assert again == a and c not in (a, b)  # a removed module's uid is not handed to another one
    finally:
        await engine.close()


def test_sandbox_without_user_is_refused_where_edgeward_cannot_switch_users(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root: the module would run as Edgeward's own user, owner of its state. Refused, naming the way out."""
    monkeypatch.setattr(proclaunch.os, "geteuid", lambda: 1000)
    spec = ModuleSpec(name="boxed", image="/bin/sh", create_options={"Sandbox": True})
    with pytest.raises(EngineError) as refused:
        plan_launch(spec, "/usr/bin/bwrap", sandbox_uid=None)
    assert refused.value.status == 400 and "User" in refused.value.message


def test_the_runtime_hides_its_state_and_run_dirs_and_takes_the_configured_uid_base(tmp_path: Path) -> None:
    problems = Problems("test")
    settings = parse_runtime_settings({"edgeward": {"runtime": {"sandbox_uid_base": 2_000_000_000}}},
                                      tmp_path / "state", tmp_path / "run", problems)
    problems.raise_if_any()
    engine = make_engine(settings)
    assert isinstance(engine, ProcessEngine)
    assert engine.sandbox_uid_base == 2_000_000_000
    assert {tmp_path / "state", tmp_path / "run"} <= set(engine.hidden)
    default = make_engine(parse_runtime_settings({}, tmp_path / "s", tmp_path / "r", problems))
    assert isinstance(default, ProcessEngine) and default.sandbox_uid_base == DEFAULT_SANDBOX_UID_BASE
    for bad in (0, 999, True, "1900000000", 0xFFFF_FFFF):
        wrong = Problems("test")
        parse_runtime_settings({"edgeward": {"runtime": {"sandbox_uid_base": bad}}}, tmp_path, tmp_path, wrong)
        with pytest.raises(ConfigError):
            wrong.raise_if_any()


@pytest.mark.parametrize("user", ["tss", "102", "65534:109", "nobody:tss"])
def test_a_module_cannot_run_as_a_service_account_or_in_its_group(user: str) -> None:
    """Packaged, each service's socket admits its group and its service users are trusted with every object: a
    host-process module running as one (User "aziotid") would be taken for that service. Refused at create, with
    or without a sandbox (here with tss, the TPM's group, which exists wherever tpm2 tools are installed)."""
    import grp
    import pwd

    try:
        tss_uid, tss_gid = pwd.getpwnam("tss").pw_uid, grp.getgrnam("tss").gr_gid
    except KeyError:
        pytest.skip("no tss account on this machine")
    user = user.replace("102", str(tss_uid)).replace(":109", f":{tss_gid}")
    for sandbox in (False, True):
        spec = ModuleSpec(name="svc", image="/bin/sh", create_options={"User": user, "Sandbox": sandbox})
        with pytest.raises(EngineError) as refused:
            plan_launch(spec, "/usr/bin/bwrap", sandbox_uid=None)
        assert refused.value.status == 400 and "service account tss" in refused.value.message, refused.value.message
