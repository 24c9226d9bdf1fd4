"""Where the cgroup v2 hierarchy is and which cgroup the daemon is in, read from /proc's own formats: a unified
host, a hybrid one (v2 under .../unified beside the v1 controllers) and a v1-only one."""

from __future__ import annotations

from pathlib import Path

from edgeward.runtime.engines.proccgroup import cgroup2_mount, own_cgroup

UNIFIED = """\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
35 22 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""
HYBRID = """\
30 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,name=systemd
"""
V1_ONLY = """\
30 25 0:26 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755
33 30 0:29 / /sys/fs/cgroup/pids rw,relatime shared:12 - cgroup cgroup rw,pids
"""


def test_the_cgroup2_mount_is_found_on_unified_and_hybrid_hosts_only() -> None:
    assert cgroup2_mount(UNIFIED) == Path("/sys/fs/cgroup")
    assert cgroup2_mount(HYBRID) == Path("/sys/fs/cgroup/unified")
    assert cgroup2_mount(V1_ONLY) is None
    # optional fields before the separator, and a mount point with an escaped space
    assert cgroup2_mount("40 1 0:40 / /mnt/my\\040cg rw shared:3 master:1 - cgroup2 none rw\n") == Path("/mnt/my cg")


def test_own_cgroup_is_the_v2_line() -> None:
    assert own_cgroup("0::/system.slice/edgeward-edged.service\n") == "/system.slice/edgeward-edged.service"
    assert own_cgroup("12:pids:/user.slice\n1:name=systemd:/user.slice\n0::/user.slice/x.scope\n") == \
        "/user.slice/x.scope"
    assert own_cgroup("12:pids:/\n1:name=systemd:/\n") is None
