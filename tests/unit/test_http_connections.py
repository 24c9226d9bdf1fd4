"""Connection caps and deadlines: how they are configured and counted (the attacks themselves run against the
real daemon in tests/integration/test_fairness.py)."""

from __future__ import annotations

import os

import pytest

from edgeward.config.problems import ConfigError
from edgeward.http.callers import (
    LocalCaller,
    ModuleCaller,
    Peer,
    by_attested_module,
    by_socket_and_uid,
    describe_caller,
)
from edgeward.http.connections import ConnectionGuard, ConnectionLimits
from edgeward.http.peercred import Caller


def test_connection_limits_come_from_the_environment_and_refuse_bad_values() -> None:
    limits = ConnectionLimits.from_environ({"EDGEWARD_HTTP_HEADER_TIMEOUT": "1.5", "EDGEWARD_HTTP_MAX_CONNECTIONS": "40"})
    assert (limits.header_timeout, limits.body_timeout, limits.total, limits.per_caller, limits.host_reserve) == (
        1.5, 10.0, 40, 2, 2)
    # A module rarely needs more than ~100 connections at once: 256 each, and 256 kept for the host.
    big = ConnectionLimits.from_environ({"EDGEWARD_HTTP_MAX_CONNECTIONS": "8192"})
    assert (big.per_caller, big.host_reserve) == (256, 256)
    with pytest.raises(ConfigError, match="EDGEWARD_HTTP_HOST_RESERVED_CONNECTIONS"):
        ConnectionLimits.from_environ({"EDGEWARD_HTTP_MAX_CONNECTIONS": "10",
                                       "EDGEWARD_HTTP_HOST_RESERVED_CONNECTIONS": "10"})
    for name, value in [("EDGEWARD_HTTP_BODY_TIMEOUT", "0"), ("EDGEWARD_HTTP_MAX_CONNECTIONS", "lots"),
                        ("EDGEWARD_HTTP_MAX_CONNECTIONS_PER_CALLER", "-1"), ("EDGEWARD_HTTP_HEADER_TIMEOUT", "nan"),
                        ("EDGEWARD_HTTP_BODY_TIMEOUT", "inf"), ("EDGEWARD_HTTP_MAX_CONNECTIONS_PER_STRANGER", "0")]:
        with pytest.raises(ConfigError, match=name):
            ConnectionLimits.from_environ({name: value})


def test_guard_caps_each_caller_and_the_total_and_frees_on_release() -> None:
    guard = ConnectionGuard(total=3)
    assert guard.admit("a", per_caller=2) is None
    assert guard.admit("a", per_caller=2) is None
    refused = guard.admit("a", per_caller=2)
    assert refused is not None and refused[0] == 429
    assert guard.admit("b", per_caller=2) is None
    assert guard.admit("c", per_caller=2) is None  # full, but a holds more than its share (1 of 3): it gives one up
    assert guard.open == {"a": 1, "b": 1, "c": 1}
    refused = guard.admit("d", per_caller=2)
    assert refused is not None and refused[0] == 503  # everyone within their share: the process's total holds
    guard.release("a")
    assert guard.admit("d", per_caller=2) is None
    for key in ("b", "c", "d"):
        guard.release(key)
    assert guard.count == 0 and guard.open == {}


def test_shared_sockets_key_by_socket_and_uid() -> None:
    as_root = Peer("/run/workload/a/workload.sock", Caller(pid=10, uid=0, gid=0))
    as_other = Peer("/run/workload/a/workload.sock", Caller(pid=11, uid=1234, gid=0))
    assert by_socket_and_uid(as_root) != by_socket_and_uid(as_other)
    assert describe_caller(by_socket_and_uid(as_other)) == "uid 1234 on /run/workload/a/workload.sock"


def test_strangers_get_a_few_connections_never_more_than_a_caller() -> None:
    limits = ConnectionLimits.from_environ({"EDGEWARD_HTTP_MAX_CONNECTIONS_PER_STRANGER": "3"})
    assert limits.per_stranger == 3
    assert ConnectionLimits().per_stranger == 8
    assert ConnectionLimits.from_environ({"EDGEWARD_HTTP_MAX_CONNECTIONS_PER_CALLER": "4"}).per_stranger == 4
    assert ConnectionLimits().capped(5).per_stranger == 5  # a service's max_requests below it lowers it too
    assert ConnectionLimits().capped(20).per_stranger == 8


def test_module_socket_callers_are_keyed_by_the_module_they_are_attested_as_else_by_uid() -> None:
    sock = "/run/workload/a/workload.sock"
    attested = {10: "a", 11: "a"}  # two processes of module a, as root and as another uid
    key = by_attested_module(lambda peer: attested.get(peer.caller.pid))
    as_root, as_other = Peer(sock, Caller(pid=10, uid=0, gid=0)), Peer(sock, Caller(pid=11, uid=1234, gid=0))
    assert key(as_root) == key(as_other) == ModuleCaller(sock, "a")
    stranger = key(Peer(sock, Caller(pid=12, uid=1000, gid=1000)))
    assert stranger == LocalCaller(sock, 1000, host=False)
    assert describe_caller(stranger) == f"uid 1000 on {sock}, not attested as a module served there"
    assert describe_caller(key(as_root)) == f"module a on {sock}"
    # Host root that is no module (this test process, when run as root) counts as the host's, not as a stranger.
    if os.geteuid() == 0:
        assert key(Peer(sock, Caller(pid=os.getpid(), uid=0, gid=0))) == LocalCaller(sock, 0, host=True)


def test_host_reserve_is_the_hosts_alone() -> None:
    guard = ConnectionGuard(total=4, host_reserve=1)
    for key in ("a", "b", "c"):
        assert guard.admit(key, per_caller=2) is None
    refused = guard.admit("d", per_caller=2)
    assert refused is not None and refused[0] == 503  # the last connection is the host's
    assert guard.admit("root", per_caller=2, host=True) is None
    # The process is full, the host wants more: it takes a connection from a caller above its share, if any.
    refused = guard.admit("root", per_caller=2, host=True)
    assert refused is not None and refused[0] == 503  # a, b, c hold one each: within their share of 3 / 3
    guard.release("c")
    guard.release("root")
    assert guard.admit("a", per_caller=2) is None  # not full: a may go above its share of 3 / 2
    assert guard.admit("root", per_caller=2, host=True) is None
    assert guard.admit("root", per_caller=2, host=True) is None  # full: a gives up its oldest
    assert guard.open == {"a": 1, "b": 1, "root": 2}


def test_a_caller_within_its_fair_share_takes_room_from_one_above_it() -> None:
    closed: list[str] = []
    guard = ConnectionGuard(total=8, host_reserve=0)
    for i in range(6):
        assert guard.admit("flood", per_caller=6, token=f"f{i}", close=lambda i=i: closed.append(f"f{i}")) is None
    assert guard.admit("b", per_caller=6, token="b0") is None
    assert guard.admit("b", per_caller=6, token="b1") is None
    # Full. Two callers: a fair share of 4. b (2) may not grow past it; flood (6) is above it.
    assert guard.admit("c", per_caller=6, token="c0") is None  # three callers now: share 2, flood loses its oldest
    assert closed == ["f0"] and guard.count == 8
    guard.release("flood", "f0")  # its close arriving later changes nothing
    assert guard.count == 8
    refused = guard.admit("b", per_caller=6, token="b2")
    assert refused is not None and refused[0] == 503  # b is at its share: no room taken for it
    refused = guard.admit("flood", per_caller=6, token="f9")
    assert refused is not None and refused[0] == 503


def test_a_strangers_budget_runs_dry_refills_and_spares_root_the_daemon_and_modules(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeward.http import connections

    now = [100.0]
    monkeypatch.setattr(connections.time, "monotonic", lambda: now[0])
    budget = connections.StrangerBudget(burst=3, rate=2.0)
    assert not budget.exhausted(1000)  # never spent anything: the common case
    for _ in range(3):
        budget.spend(1000)
    assert budget.exhausted(1000) and budget.dropped == 1
    budget.refund(1000)  # a successful answer gives one back
    assert not budget.exhausted(1000)
    budget.spend(1000)
    now[0] += 0.5  # 2 a second: one more after half a second
    assert not budget.exhausted(1000)
    for uid in (0, os.getuid()):  # never charged, never dropped
        for _ in range(10):
            budget.spend(uid)
        assert not budget.exhausted(uid)
    for _ in range(5):
        budget.spend(2000)
    budget.note_module(2000)  # a uid a module's process was attested under is not dropped
    assert not budget.exhausted(2000)
    now[0] += connections.StrangerBudget.MODULE_MEMORY + 1
    budget._left[2000] = (0.0, now[0])
    assert budget.exhausted(2000)


def test_past_max_uids_the_rest_share_one_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeward.http import connections

    monkeypatch.setattr(connections.StrangerBudget, "MAX_UIDS", 4)
    budget = connections.StrangerBudget(burst=2, rate=0.001)
    for uid in range(100, 104):
        budget.spend(uid)  # the table is full (none of them is whole again)
    budget.spend(200)
    budget.spend(201)  # 200 and 201 share the overflow budget: two spent
    assert budget.exhausted(202) and budget.exhausted(200)
    assert not budget.exhausted(100)


def test_strangers_count_together_per_socket_and_host_user_namespace_callers_by_uid() -> None:
    from edgeward.http.callers import Strangers, in_host_user_namespace
    from edgeward.http.connections import _pooled

    sock = "/run/m/workload.sock"
    me = Caller(pid=os.getpid(), uid=1000, gid=1000)
    assert _pooled(Peer(sock, me), LocalCaller(sock, 1000)) == Strangers(sock)
    assert _pooled(Peer(sock, me), LocalCaller(sock, 0, host=True)) == LocalCaller(sock, 0, host=True)
    assert _pooled(Peer(sock, me), ModuleCaller(sock, "m")) == ModuleCaller(sock, "m")
    # On a shared socket, a caller of the host's user namespace (this process) stays per uid; one that cannot be
    # placed in it (no peer) joins the strangers.
    assert in_host_user_namespace(me)
    assert _pooled(Peer("/run/keyd.sock", me), ("/run/keyd.sock", 1000)) == ("/run/keyd.sock", 1000)
    nobody = Caller(pid=0, uid=-1, gid=-1)
    assert _pooled(Peer("/run/keyd.sock", nobody), ("/run/keyd.sock", -1)) == Strangers("/run/keyd.sock")
    assert describe_caller(Strangers(sock)) == f"the callers on {sock} that are neither the host nor a module"
