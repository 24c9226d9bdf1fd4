"""Which container a /proc/<pid>/cgroup names: every engine's layout, v1 and v2, and ambiguity never resolved."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeward.attest.cgroups import _PATTERNS, container_id_from_cgroup, read_container_id

A = "a" * 64
B = "0123456789abcdef" * 4


@pytest.mark.parametrize("text", [
    f"12:memory:/docker/{A}\n11:cpu,cpuacct:/docker/{A}\n0::/docker/{A}",
    f"0::/system.slice/docker-{A}.scope",
    f"1:name=systemd:/libpod_parent/libpod-{A}\n0::/libpod_parent/libpod-{A}",
    f"0::/machine.slice/libpod-{A}.scope/container",
    f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{A}.scope",
    f"4:pids:/kubepods/besteffort/pod1234/{A}",
    f"0::/system.slice/crio-{A}.scope",
])
def test_layouts(text: str) -> None:
    assert container_id_from_cgroup(text) == A


@pytest.mark.parametrize("text", [
    "0::/user.slice/user-0.slice/session-1.scope",
    "0::/",
    f"0::/docker/{A[:-1]}",  # 63 digits
    f"0::/docker/{A.upper()}",
    f"0::/machine.slice/libpod-conmon-{A}.scope",  # podman's monitor runs outside the container
    f"12:memory:/docker/{A}\n0::/docker/{B}",  # two containers: ambiguous
    "garbage without colons",
    "",
])
def test_no_single_container(text: str) -> None:
    assert container_id_from_cgroup(text) is None


def test_this_process_is_in_no_container() -> None:
    assert read_container_id(os.getpid()) is None
    assert read_container_id(2**22 + 12345) is None  # no such pid


@given(st.text(max_size=300))
def test_never_raises_and_only_returns_hex_ids(text: str) -> None:
    got = container_id_from_cgroup(text)
    assert got is None or (len(got) == 64 and all(c in "0123456789abcdef" for c in got))


@given(st.lists(st.sampled_from([f"/docker/{A}", f"/system.slice/docker-{A}.scope", f"/libpod_parent/libpod-{A}",
                                 "/user.slice", "/init.scope"]), min_size=1, max_size=8))
def test_any_mix_of_lines_naming_one_container_names_it(paths: list[str]) -> None:
    text = "\n".join(f"{i}:ctl:{p}" for i, p in enumerate(paths))
    assert container_id_from_cgroup(text) == (A if any(A in p for p in paths) else None)


_OLD_KUBEPODS = re.compile(r"/kubepods[^\n]*/([0-9a-f]{64})(?:/|$)")


@given(st.lists(st.sampled_from(["kubepods", "kubepods.slice", "kubepodsX", "pod1", A, B, A + "x", "", "docker-x"]),
                max_size=10))
def test_kubernetes_paths_are_read_as_the_one_regex_read_them(components: list[str]) -> None:
    """The linear reading of Kubernetes paths names what "/kubepods.*/<id>" named (first match, greedy)."""
    path = "/" + "/".join(components)
    old = _OLD_KUBEPODS.search(path)
    got = container_id_from_cgroup(f"0::{path}")
    if old is not None and not any(p.search(path) for p in _PATTERNS):
        assert got == old.group(1)
    elif old is None and not any(p.search(path) for p in _PATTERNS):
        assert got is None


def test_a_long_path_of_kubepods_is_read_in_one_pass() -> None:
    path = "/kubepods" * 455  # 4 KB: what /proc/<pid>/cgroup shows at most per line
    assert container_id_from_cgroup(f"0::{path}/{A}") == A
    assert container_id_from_cgroup(f"0::{path}") is None
