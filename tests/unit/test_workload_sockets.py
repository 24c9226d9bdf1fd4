"""Which module's socket a workload request arrived on: one fact attestation checks on every call."""

from __future__ import annotations

import hashlib
from pathlib import Path

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
