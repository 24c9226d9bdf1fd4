"""Which module's socket a workload request arrived on: one fact attestation checks on every call."""

from __future__ import annotations

import hashlib
import logging
import socket
import stat
from pathlib import Path

import pytest
from aiohttp import web

from edgeward.runtime.sockets import WorkloadSockets


def test_a_socket_names_its_own_module_only(tmp_path: Path) -> None:
    sockets = WorkloadSockets(tmp_path / "workload", socket_name="workload.sock")
    path = str(sockets.socket_path("filter"))
    assert sockets.module_of(path) == "filter"
    assert sockets.module_of(path) == "filter"  # remembered, same answer
    assert sockets.module_of(path.encode()) == "filter"
    assert sockets.module_of(str(tmp_path / "workload" / "filter" / "other.sock")) is None
    assert sockets.module_of(str(tmp_path / "elsewhere" / "filter" / "workload.sock")) is None
    assert sockets.module_of("") is None and sockets.module_of(None) is None


def test_a_hashed_directory_names_its_module_once_the_module_has_it(tmp_path: Path) -> None:
    sockets = WorkloadSockets(tmp_path / "workload", socket_name="workload.sock")
    long_name = "m" * 120
    hashed = "~" + hashlib.sha256(long_name.encode()).hexdigest()[:32]
    path = str(tmp_path / "workload" / hashed / "workload.sock")
    # Asked before the module has its directory: the hash names no module (refused), and that is not remembered.
    assert sockets.module_of(path) == hashed
    assert str(sockets.socket_path(long_name)) == path
    assert sockets.module_of(path) == long_name


async def test_a_module_socket_that_cannot_be_bound_fails_alone(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """What a module left where its socket goes (a regular file from a container that could write its directory)
    stays there, and that module's socket fails with a log line naming it; the next module's socket is served."""
    runner = web.AppRunner(web.Application())
    await runner.setup()
    sockets = WorkloadSockets(tmp_path / "workload", runner, socket_name="workload.sock")
    try:
        planted = sockets.socket_path("planted")
        planted.parent.mkdir(parents=True)
        planted.write_text("not a socket")
        with caplog.at_level(logging.ERROR, logger="edgeward.runtime.sockets"):
            assert await sockets.open("planted") == planted.parent
        assert planted.read_text() == "not a socket"
        assert "planted" in sockets.unavailable and "not a socket" in sockets.unavailable["planted"]
        assert f"workload socket of module planted cannot be opened at {planted}" in caplog.text
        await sockets.open("other")
        assert "other" not in sockets.unavailable
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(sockets.socket_path("other")))
        # Once the path is clear, the next open binds it (and the module is no longer reported).
        planted.unlink()
        await sockets.open("planted")
        assert "planted" not in sockets.unavailable and stat.S_ISSOCK(planted.lstat().st_mode)
    finally:
        await sockets.close_all()
        await runner.cleanup()


async def test_removing_a_module_whose_socket_path_was_made_a_directory_does_not_fail(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A container made before read-only workload mounts could plant a directory where its socket goes; removing
    the module then raised IsADirectoryError out of close (helper review, session 11). Now it is left, and said."""
    sockets = WorkloadSockets(tmp_path / "workload", socket_name="workload.sock")
    planted = sockets.socket_path("old")
    planted.mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="edgeward.runtime.sockets"):
        await sockets.close("old")
    assert planted.is_dir() and str(planted) in caplog.text
