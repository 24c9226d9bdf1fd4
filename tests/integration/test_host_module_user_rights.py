"""A host module gets its `User`'s rights and no more (session-14 review, brk14b): its WorkingDir is entered with
them, not as root before the drop (workingdir_traversal), and its group is its user's own, not anyone's it names
(foreign_gid). The runtime as the daemon composes it, its management API, real processes."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edgeward.http.errors import HttpError
from edgeward.runtime.compose import make_engine
from edgeward.runtime.engines import process as process_engine
from edgeward.runtime.engines.process import ProcessEngine
from edgeward.runtime.engines.proclaunch import _PRIVILEGED_GROUPS, SERVICE_ACCOUNTS
from edgeward.runtime.mgmt_client import ManagementClient
from tests.fixtures.modules import logs_until
from tests.fixtures.runtime import RuntimeEnv, runtime_settings, serve_runtime

pytestmark = [pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.skipif(os.geteuid() != 0, reason="switching a module's user needs a daemon running as root")]

SH = "/bin/sh"
UID_M, UID_V = 4311, 4312  # no passwd entries: a module's user, and a victim's
# What the module sees: its ids, where it is, and what it can read there by a relative path.
SHOW = 'echo "ID $(id -u) $(id -g) CWD $(pwd -P) PID $$"; cat ./secret 2>&1; echo END; ' \
       "exec sleep 60"
SECRET = "secret behind a 0700 directory"


def _spec(name: str, user: str, image: str = SH, **options: Any) -> dict[str, Any]:
    return {"name": name, "type": "docker", "imagePullPolicy": "never",
            "config": {"settings": {"image": image, "createOptions": {"Cmd": ["-c", SHOW], "User": user, **options}},
                       "env": []}}


@pytest.fixture
async def runtime(request: pytest.FixtureRequest, public_dir: Path) -> AsyncIterator[RuntimeEnv]:
    """The config defaults: elevated permissions off."""
    doc = {"hostname": "edge1"}
    async with serve_runtime(request, public_dir, make_engine(runtime_settings(public_dir, doc)), doc) as env:
        yield env


@pytest.fixture
async def mgmt(runtime: RuntimeEnv) -> AsyncIterator[ManagementClient]:
    client = ManagementClient(runtime.mgmt_socket)
    yield client
    await client.close()


@pytest.fixture
def tree(public_dir: Path) -> Path:
    """W/private (0700 root) /sub (0755) /secret (0644), as /root or a 0700 home; W/open/sub, passable by all;
    W/file, a file."""
    work = public_dir / "w"
    work.mkdir(mode=0o755)
    (work / "private").mkdir(mode=0o700)
    (work / "private" / "sub").mkdir(mode=0o755)
    (work / "private" / "sub" / "secret").write_text(SECRET + "\n")
    (work / "open" / "sub").mkdir(mode=0o755, parents=True)
    (work / "open").chmod(0o755)
    (work / "file").write_text("not a directory\n")
    return work


async def _refused(mgmt: ManagementClient, call: Any) -> HttpError:
    with pytest.raises(HttpError) as refused:
        await call
    return refused.value


# -- WorkingDir -----------------------------------------------------------------------------------------------------
async def test_a_working_dir_the_modules_user_cannot_enter_fails_the_start_and_shows_nothing(
        mgmt: ManagementClient, tree: Path) -> None:
    """brk14b workingdir_traversal: with WorkingDir below a 0700 root directory, the module started there (root
    entered it before the drop to User) and read ./secret, which its uid cannot reach. Now the start fails with a
    400 naming WorkingDir, and the same answer whether the directory is there, missing or a file: nothing a
    non-root could not learn."""
    messages = []
    for uid, name, where in ((UID_M, "hidden", tree / "private" / "sub"),
                             (UID_M + 10, "missing", tree / "private" / "nope"), (UID_M + 11, "notadir", tree / "file")):
        await mgmt.create_module(_spec(name, f"{uid}:{uid}", WorkingDir=str(where)))
        refused = await _refused(mgmt, mgmt.action(name, "start"))
        assert refused.status == 400 and "createOptions.WorkingDir" in refused.message, refused.message
        assert SECRET not in refused.message
        messages.append(refused.message.replace(str(where), "DIR").replace(name, "NAME").replace(str(uid), "UID"))
        status = {m["name"]: m for m in await mgmt.list_modules()}[name]
        assert status["status"]["runtimeStatus"]["status"] != "running", status
    assert len(set(messages)) == 1, messages


async def test_a_module_enters_its_working_dir_as_its_user_and_runs_its_image(
        mgmt: ManagementClient, runtime: RuntimeEnv, tree: Path) -> None:
    """A WorkingDir its user can enter works as before: it starts there, as its uid, and its main process runs the
    measured image (the step that enters the directory execs it in place)."""
    await mgmt.create_module(_spec("opener", f"{UID_M}:{UID_M}", WorkingDir=str(tree / "open" / "sub")))
    await mgmt.action("opener", "start")
    seen = (await logs_until(mgmt, "opener", b"END")).decode()
    assert f"ID {UID_M} {UID_M} CWD {tree / 'open' / 'sub'} PID " in seen, seen
    engine = runtime.parts.engine
    assert isinstance(engine, ProcessEngine)
    pid = engine._modules["opener"].record.pid  # the supervised process is the module's own, exec'd in place
    assert seen.split("PID ", 1)[1].split()[0] == str(pid), (pid, seen)
    assert pid is not None and Path(f"/proc/{pid}/exe").readlink() == Path("/usr/bin/sleep").resolve()


async def test_a_working_dir_is_entered_after_the_drop_even_when_the_start_check_passes(
        mgmt: ManagementClient, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What keeps ./secret out of reach is that the module's own process enters the directory, as its user; the
    check at start only gives the clear error. With the check skipped (a directory that changes in between), the
    module cannot get in and never runs there."""
    async def passes(*_: Any) -> None:
        return None

    monkeypatch.setattr(process_engine, "_check_workdir", passes, raising=False)
    await mgmt.create_module(_spec("racer", f"{UID_M}:{UID_M}", WorkingDir=str(tree / "private" / "sub")))
    try:
        await mgmt.action("racer", "start")
    except HttpError:
        return  # refused at start: nothing ran (main)
    seen = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(15):
            async for chunk in mgmt.logs("racer", follow=True):  # ends when it exits
                seen += chunk.data
                if b"END" in seen:
                    break
    assert SECRET.encode() not in seen and b"ID " not in seen, seen
    assert b"cd" in seen, seen  # the shell that enters it, as the module's user, said why it could not


# -- User's group ---------------------------------------------------------------------------------------------------
def _primary_group_of_another(uid: int) -> str:
    """A group that is some passwd user's primary group (not `uid`'s), not root's nor a privileged one."""
    for entry in pwd.getpwall():
        if entry.pw_uid not in (0, uid) and entry.pw_gid not in (0, pwd.getpwuid(uid).pw_gid):
            try:
                name = grp.getgrgid(entry.pw_gid).gr_name
            except KeyError:
                continue
            if name not in ("shadow", "adm", "disk", "staff", "mail", "tty"):
                return name
    pytest.skip("no other user's primary group here")


async def test_a_user_with_someone_elses_group_is_refused(mgmt: ManagementClient) -> None:
    """brk14b foreign_gid: `User: "<module uid>:<another user's group>"` ran with that group and read the other
    user's 0640 files. A module's gid is its uid's primary group (passwd), or the uid itself when the uid has no
    passwd entry; anything else is a 400 naming createOptions.User, and nothing is created."""
    other = _primary_group_of_another(65534)
    for user in (f"{UID_M}:{UID_V}", f"nobody:{other}", f"65534:{grp.getgrnam(other).gr_gid}", f"{UID_M}:nogroup"):
        refused = await _refused(mgmt, mgmt.create_module(_spec("foreign", user)))
        assert refused.status == 400 and "createOptions.User" in refused.message, (user, refused.message)
        assert "group" in refused.message, refused.message
    assert await mgmt.list_modules() == []


def _unowned_group() -> grp.struct_group:
    """A group of the system whose gid is no passwd user's uid (so "gid:gid" is a uid without a passwd entry)."""
    for group in grp.getgrall():
        if group.gr_gid > 0 and group.gr_gid != 65534 and group.gr_name not in (*_PRIVILEGED_GROUPS,
                                                                                  *SERVICE_ACCOUNTS):
            try:
                pwd.getpwuid(group.gr_gid)
            except KeyError:
                return group
    pytest.skip("every group here is also a user's uid")


async def test_a_uid_without_passwd_entry_gets_no_named_group_of_the_system(mgmt: ManagementClient) -> None:
    """"N:N" with no passwd entry for N, where N is a group the system names (staff, video, a person's group):
    that group's files, not the module's own. Refused with a 400 naming the group."""
    group = _unowned_group()
    refused = await _refused(mgmt, mgmt.create_module(_spec("squat", f"{group.gr_gid}:{group.gr_gid}")))
    assert refused.status == 400 and "createOptions.User" in refused.message, refused.message
    assert group.gr_name in refused.message, refused.message
    assert await mgmt.list_modules() == []


@pytest.mark.parametrize("group", ["staff", "src", "tty", "input", "libvirt", "lpadmin", "netdev", "mail"])
async def test_a_group_that_reaches_roots_code_or_console_is_refused(mgmt: ManagementClient, group: str) -> None:
    """brk14b foreign_gid: `User: "<uid>:staff"` wrote into a root:staff 2775 /usr/local/bin (root's PATH); tty
    and input reach every terminal and keyboard. Refused like disk or shadow (422), before the own-group rule: the
    privileged list is the defence in depth, for a user whose own primary group is one of them."""
    try:
        grp.getgrnam(group)
    except KeyError:
        pytest.skip(f"no group {group} here")
    refused = await _refused(mgmt, mgmt.create_module(_spec("grouped", f"{UID_M}:{group}")))
    assert refused.status == 422 and group in refused.message, refused.message
    assert await mgmt.list_modules() == []


@pytest.mark.parametrize("group", ["video", "audio", "dialout", "plugdev"])
async def test_a_device_group_is_only_a_users_own(mgmt: ManagementClient, group: str) -> None:
    """A device group an IoT module may need (cameras, serial sensors) is not a privileged one, but a deployment
    cannot pick it for a user whose group it is not: 400, the own-group rule."""
    try:
        grp.getgrnam(group)
    except KeyError:
        pytest.skip(f"no group {group} here")
    refused = await _refused(mgmt, mgmt.create_module(_spec("device", f"{UID_M}:{group}")))
    assert refused.status == 400 and group in refused.message and "createOptions.User" in refused.message, \
        refused.message
    assert await mgmt.list_modules() == []


def _a_person() -> pwd.struct_passwd | None:
    for entry in pwd.getpwall():
        if 1000 <= entry.pw_uid < 60000 and entry.pw_gid == entry.pw_uid:
            return entry
    return None


async def test_real_users_still_run_with_their_own_group(mgmt: ManagementClient, tree: Path) -> None:
    """What deployments give: a user name, "uid:gid" of a passwd user and its primary group, "N:N" for a uid without
    passwd entry, nobody (once). Each runs with exactly that uid and gid."""
    users: list[tuple[str, int, int]] = [(f"{UID_M}:{UID_M}", UID_M, UID_M),
                                         ("nobody:nogroup", 65534, pwd.getpwnam("nobody").pw_gid)]
    person = _a_person()
    if person is not None:
        users.append((f"{person.pw_uid}:{person.pw_gid}", person.pw_uid, person.pw_gid))
    for i, (user, uid, gid) in enumerate(users):
        name = f"real{i}"
        await mgmt.create_module(_spec(name, user, WorkingDir=str(tree / "open")))
        await mgmt.action(name, "start")
        seen = (await logs_until(mgmt, name, b"END")).decode()
        assert f"ID {uid} {gid} CWD {tree / 'open'} " in seen, (user, seen)
