"""Connection caps and deadlines: how they are configured and counted (the attacks themselves run against the
real daemon in tests/integration/test_fairness.py)."""

from __future__ import annotations

import pytest

from edgeward.config.problems import ConfigError
from edgeward.http.callers import Peer, by_socket, by_socket_and_uid, describe_caller
from edgeward.http.connections import ConnectionGuard, ConnectionLimits
from edgeward.http.peercred import Caller


def test_connection_limits_come_from_the_environment_and_refuse_bad_values() -> None:
    limits = ConnectionLimits.from_environ({"EDGEWARD_HTTP_HEADER_TIMEOUT": "1.5", "EDGEWARD_HTTP_MAX_CONNECTIONS": "40"})
    assert (limits.header_timeout, limits.body_timeout, limits.total, limits.per_caller) == (1.5, 10.0, 40, 10)
    for name, value in [("EDGEWARD_HTTP_BODY_TIMEOUT", "0"), ("EDGEWARD_HTTP_MAX_CONNECTIONS", "lots"),
                        ("EDGEWARD_HTTP_MAX_CONNECTIONS_PER_CALLER", "-1"), ("EDGEWARD_HTTP_HEADER_TIMEOUT", "nan"),
                        ("EDGEWARD_HTTP_BODY_TIMEOUT", "inf")]:
        with pytest.raises(ConfigError, match=name):
            ConnectionLimits.from_environ({name: value})


def test_guard_caps_each_caller_and_the_total_and_frees_on_release() -> None:
    guard = ConnectionGuard(total=3)
    assert guard.admit("a", per_caller=2) is None
    assert guard.admit("a", per_caller=2) is None
    refused = guard.admit("a", per_caller=2)
    assert refused is not None and refused[0] == 429
    assert guard.admit("b", per_caller=2) is None
    refused = guard.admit("c", per_caller=2)
    assert refused is not None and refused[0] == 503  # the process's total, whoever asks
    guard.release("a")
    assert guard.admit("c", per_caller=2) is None
    for key in ("a", "b", "c"):
        guard.release(key)
    assert guard.count == 0 and guard.open == {}


def test_module_sockets_key_by_socket_alone_so_switching_uid_gains_nothing() -> None:
    as_root = Peer("/run/workload/a/workload.sock", Caller(pid=10, uid=0, gid=0))
    as_other = Peer("/run/workload/a/workload.sock", Caller(pid=11, uid=1234, gid=0))
    assert by_socket(as_root) == by_socket(as_other)
    assert by_socket_and_uid(as_root) != by_socket_and_uid(as_other)
    assert describe_caller(by_socket_and_uid(as_other)) == "uid 1234 on /run/workload/a/workload.sock"
