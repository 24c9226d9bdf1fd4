"""The createOptions rules of runtime/privileges.py without an engine: path resolution tricks (.., symlinks, trailing
and doubled slashes, parents), key spellings Docker accepts, devices, security options, and `edgeward check`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgeward.cli.check import check
from edgeward.config.problems import Problems
from edgeward.daemon import load_settings
from edgeward.runtime.privileges import (
    ElevatedOptionRefused,
    HostBind,
    PrivilegePolicy,
    Protected,
    engine_paths_from_cmdline,
    host_binds,
    host_views,
    policy_for,
    resolve_in,
    vet_create_options,
)
from edgeward.runtime.settings import parse_runtime_settings

STATE, RUN = "/var/lib/edgeward", "/run/edgeward"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fake host root: symlinks in it are resolved as the engine would resolve them on the host."""
    r = tmp_path / "host"
    for d in ("var/lib/edgeward/keys", "run/edgeward/workload/victim", "data/deep/er", "etc", "dev/serial/by-id"):
        (r / d).mkdir(parents=True)
    (r / "data/abs").symlink_to(STATE)  # absolute target: starts again at the host root
    (r / "data/rel").symlink_to("../var/lib")
    (r / "data/keysdir").symlink_to(f"{STATE}/keys")
    (r / "data/elsewhere").symlink_to("deep/er")
    (r / "data/loop").symlink_to("loop")
    (r / "var/run").symlink_to("../run")
    (r / "dev/serial/by-id/usb-FTDI").symlink_to("../../ttyUSB0")
    (r / "dev/serial/by-id/usb-disk").symlink_to("../../sda")
    return r


def policy(root: Path, allow: bool = False) -> PrivilegePolicy:
    return PrivilegePolicy(allow, (Protected(STATE, "Edgeward's state directory"),
                                   Protected(RUN, "Edgeward's run directory"),
                                   Protected("/proc", "the host's /proc"), Protected("/sys", "the host's /sys"),
                                   Protected("/var/run/docker.sock", "the container engine's socket"),
                                   Protected("/dev/pts", "the host's terminals"),
                                   Protected("/etc", "a host system directory", writes_only=True)),
                           roots=(str(root),))


def bind(source: str) -> dict[str, Any]:
    return {"HostConfig": {"Binds": [f"{source}:/mnt"]}}


def test_resolve_in_follows_symlinks_inside_the_given_root(root: Path) -> None:
    assert resolve_in(str(root), "/data/abs/keys") == f"{STATE}/keys"
    assert resolve_in(str(root), "/data/rel/edgeward/") == STATE
    # the kernel follows the symlink before "..": keysdir/.. is the state dir, not /data
    assert resolve_in(str(root), "/data/keysdir/../x") == f"{STATE}/x"
    assert resolve_in(str(root), "/var/run/docker.sock") == "/run/docker.sock"
    assert resolve_in(str(root), "/data/missing/../../etc") == "/etc"
    with pytest.raises(ValueError, match="symbolic links"):
        resolve_in(str(root), "/data/loop/x")


@pytest.mark.parametrize("source", [
    STATE, f"{STATE}/", f"{STATE}/keys", "//var//lib/edgeward", f"{RUN}/../../var/lib/edgeward/./",
    "/", "/var", "/var/lib", "/run", f"{RUN}/workload/victim",
    "/data/abs", "/data/rel", "/data/rel/edgeward/keys", "/data/keysdir/../..",
    # Docker cleans ".." lexically before it resolves: elsewhere/../../var/lib/edgeward is the state dir to Docker
    "/data/elsewhere/../../var/lib/edgeward",
    "/proc", "/proc/1/root", "/sys/fs/cgroup", "/sys/", "/var/run/docker.sock", "/run/docker.sock", "/var/run",
])
def test_binds_that_reach_a_protected_path_are_refused(root: Path, source: str) -> None:
    with pytest.raises(ElevatedOptionRefused) as refused:
        vet_create_options(bind(source), policy(root))
    assert refused.value.option == "HostConfig.Binds[0]" and refused.value.status == 422
    assert "allow_elevated_docker_permissions = true" in refused.value.message


def test_system_directories_may_be_bound_read_only_only(root: Path) -> None:
    for source in ("/etc", "/etc/cron.d", "/etc/localtime", "/data/../etc/"):
        assert vet_create_options({"HostConfig": {"Binds": [f"{source}:/e:ro,z"], "Mounts": [
            {"Type": "bind", "Source": source, "Target": "/m", "ReadOnly": True}]}}, policy(root))
        for writable in ({"Binds": [f"{source}:/e"]}, {"Binds": [f"{source}:/e:rw"]},
                         {"Mounts": [{"Type": "bind", "Source": source, "Target": "/m"}]},
                         {"Mounts": [{"Type": "bind", "Source": source, "Target": "/m", "ReadOnly": "true"}]}):
            with pytest.raises(ElevatedOptionRefused, match="host system directory"):
                vet_create_options({"HostConfig": writable}, policy(root))
    with pytest.raises(ElevatedOptionRefused, match="terminals"):  # a host pty's input is someone's password
        vet_create_options({"HostConfig": {"Binds": ["/dev:/dev:ro"]}}, policy(root))


def test_the_same_tricks_through_mounts_are_refused(root: Path) -> None:
    for source in ("/data/abs/", "//proc", "/data/keysdir/.."):
        with pytest.raises(ElevatedOptionRefused, match=r"HostConfig\.Mounts\[0\]"):
            vet_create_options({"HostConfig": {"Mounts": [{"Type": "bind", "Source": source, "Target": "/m"}]}},
                               policy(root))


@pytest.mark.parametrize("source", ["/data", "/data/deep", "/data/elsewhere", "/home/pi/data", "/srv/log",
                                    "/usr", "named-volume"])
def test_binds_of_other_paths_are_allowed(root: Path, source: str) -> None:
    vetted = vet_create_options(bind(source), policy(root))
    assert vetted.options["HostConfig"]["Binds"] == [f"{source}:/mnt"] and not vetted.stripped


def test_unresolvable_paths_are_refused(root: Path) -> None:
    for source in ("/data/loop", "/data/x\0y"):
        with pytest.raises(ElevatedOptionRefused, match="cannot be resolved safely"):
            vet_create_options(bind(source), policy(root))


def test_privileged_and_cap_add_are_stripped_and_chown_setuid_dropped_as_iot_edge_does(root: Path) -> None:
    asked = {"Cmd": ["x"], "HostConfig": {"Privileged": True, "CapAdd": ["SYS_ADMIN"], "CapDrop": ["NET_RAW"],
                                          "NetworkMode": "host"}}
    vetted = vet_create_options(asked, policy(root))
    assert vetted.stripped == ("HostConfig.Privileged", "HostConfig.CapAdd")
    assert vetted.options == {"Cmd": ["x"], "HostConfig": {"CapDrop": ["CHOWN", "SETUID", "NET_RAW"],
                                                           "NetworkMode": "host"}}
    assert asked["HostConfig"]["Privileged"] is True  # the caller's dict is left alone
    again = vet_create_options(vetted.options, policy(root))  # idempotent: an update vets twice
    assert again.options == vetted.options and not again.stripped


def test_key_spellings_docker_accepts_are_caught(root: Path) -> None:
    vetted = vet_create_options({"hostConfig": {"PRIVILEGED": True, "capadd": ["ALL"]}}, policy(root))
    assert vetted.stripped == ("HostConfig.Privileged", "HostConfig.CapAdd")
    assert set(vetted.options) == {"HostConfig"}
    # Go folds U+017F (long s) to "s": "Bind\u017f" is Binds to Docker
    with pytest.raises(ElevatedOptionRefused, match="contains"):
        vet_create_options({"HostConfig": {"Bind\u017f": ["/:/h"]}}, policy(root))
    with pytest.raises(ElevatedOptionRefused, match="Docker reads keys without regard to case"):
        vet_create_options({"HostConfig": {"PidMode": "", "pidMode": "host"}}, policy(root))
    with pytest.raises(ElevatedOptionRefused, match="Docker reads keys without regard to case"):
        vet_create_options({"HostConfig": {}, "hostconfig": {"Privileged": True}}, policy(root))
    with pytest.raises(ElevatedOptionRefused, match="belongs in HostConfig"):
        vet_create_options({"Privileged": True}, policy(root))


@pytest.mark.parametrize(("host", "option"), [
    ({"PidMode": "host"}, "HostConfig.PidMode"), ({"PidMode": "container:edgeAgent"}, "HostConfig.PidMode"),
    ({"IpcMode": "HOST"}, "HostConfig.IpcMode"), ({"IpcMode": "container:x"}, "HostConfig.IpcMode"),
    ({"UsernsMode": "host"}, "HostConfig.UsernsMode"), ({"CgroupParent": "/docker/" + "a" * 64},
                                                         "HostConfig.CgroupParent"),
    ({"Cgroup": "container:x"}, "HostConfig.Cgroup"), ({"VolumesFrom": ["edgeAgent"]}, "HostConfig.VolumesFrom"),
    ({"SecurityOpt": ["apparmor=unconfined"]}, "HostConfig.SecurityOpt[0]"),
    ({"SecurityOpt": ["no-new-privileges", "seccomp=unconfined"]}, "HostConfig.SecurityOpt[1]"),
    ({"SecurityOpt": ['seccomp={"defaultAction":"SCMP_ACT_ALLOW"}']}, "HostConfig.SecurityOpt[0]"),
    ({"SecurityOpt": ["label=disable"]}, "HostConfig.SecurityOpt[0]"),
    ({"SecurityOpt": ["label:type:spc_t"]}, "HostConfig.SecurityOpt[0]"),
    ({"SecurityOpt": ["systempaths=unconfined"]}, "HostConfig.SecurityOpt[0]"),
    ({"MaskedPaths": []}, "HostConfig.MaskedPaths"), ({"ReadonlyPaths": []}, "HostConfig.ReadonlyPaths"),
    ({"Devices": [{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda"}]}, "HostConfig.Devices[0]"),
    ({"Devices": [{"PathOnHost": "/dev/mem"}]}, "HostConfig.Devices[0]"),
    ({"Devices": [{"PathOnHost": "/dev/tpmrm0"}]}, "HostConfig.Devices[0]"),
    ({"Devices": [{"PathOnHost": "/dev"}]}, "HostConfig.Devices[0]"),
    ({"Devices": [{"PathOnHost": "/dev/serial/by-id/usb-disk"}]}, "HostConfig.Devices[0]"),
    ({"Devices": [{"PathOnHost": "/dev/ttyUSB0/../sda"}]}, "HostConfig.Devices[0]"),
    ({"DeviceCgroupRules": ["a *:* rwm"]}, "HostConfig.DeviceCgroupRules[0]"),
    ({"DeviceCgroupRules": ["c 1:1 rwm"]}, "HostConfig.DeviceCgroupRules[0]"),
    ({"DeviceCgroupRules": ["b 8:* rwm"]}, "HostConfig.DeviceCgroupRules[0]"),
    ({"DeviceCgroupRules": ["c *:* rwm"]}, "HostConfig.DeviceCgroupRules[0]"),
    ({"DeviceCgroupRules": ["c 254:0 rw"]}, "HostConfig.DeviceCgroupRules[0]"),
    ({"Mounts": [{"Type": "volume", "Source": "v", "Target": "/v", "VolumeOptions": {"DriverConfig": {
        "Name": "local", "Options": {"type": "none", "o": "bind", "device": "/"}}}}]},
     "HostConfig.Mounts[0].VolumeOptions.DriverConfig.Options"),
    ({"LogConfig": {"Type": "fluentd", "Config": {"fluentd-address": "unix:///run/edgeward/keyd.sock"}}},
     "HostConfig.LogConfig.Config.fluentd-address"),
    ({"Binds": "/:/host"}, "HostConfig.Binds"),
])
def test_host_namespaces_profiles_devices_and_cgroups_are_refused(root: Path, host: dict[str, Any],
                                                                   option: str) -> None:
    with pytest.raises(ElevatedOptionRefused) as refused:
        vet_create_options({"HostConfig": host}, policy(root))
    assert refused.value.option == option
    assert option in refused.value.message and "allow_elevated_docker_permissions" in refused.value.message


def test_common_iot_options_are_allowed(root: Path) -> None:
    host = {"NetworkMode": "host", "PidMode": "", "IpcMode": "shareable", "UTSMode": "host",
            "SecurityOpt": ["no-new-privileges:true", "apparmor=docker-default"],
            "Devices": [{"PathOnHost": "/dev/ttyUSB0", "PathInContainer": "/dev/ttyUSB0", "CgroupPermissions": "rwm"},
                        {"PathOnHost": "/dev/serial/by-id/usb-FTDI", "PathInContainer": "/dev/ttyUSB0"},
                        {"PathOnHost": "/dev/i2c-1"}, {"PathOnHost": "/dev/video0"}, {"PathOnHost": "/dev/snd"}],
            "DeviceCgroupRules": ["c 188:* rmw", "c 166:0 rw"],
            "PortBindings": {"8883/tcp": [{"HostPort": "8883"}]}, "Mounts": [
                {"Type": "volume", "Source": "edgehub-data", "Target": "/data"},
                {"Type": "tmpfs", "Target": "/tmp"}],
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}}
    vetted = vet_create_options({"HostConfig": host}, policy(root))
    assert not vetted.stripped
    assert {k: v for k, v in vetted.options["HostConfig"].items() if k != "CapDrop"} == host


def test_nothing_is_changed_when_elevated_permissions_are_allowed(root: Path) -> None:
    asked = {"HostConfig": {"Privileged": True, "CapAdd": ["SYS_ADMIN"], "PidMode": "host", "Binds": ["/:/host"]}}
    vetted = vet_create_options(asked, policy(root, allow=True))
    assert vetted.options == asked and not vetted.stripped


def test_policy_protects_the_engine_socket_state_and_run_dirs_from_settings(tmp_path: Path) -> None:
    doc: dict[str, Any] = {"moby_runtime": {"uri": "unix:///srv/engine/docker.sock"}}
    settings = parse_runtime_settings(doc, tmp_path / "state", tmp_path / "run", Problems("t"))
    assert settings.allow_elevated_docker_permissions is False  # Edgeward's default (IoT Edge 1.5's is true)
    policy = policy_for(settings)
    protected = {p.path for p in policy.protected}
    assert {"/srv/engine/docker.sock", str(tmp_path / "state"), str(tmp_path / "run"), "/proc", "/sys",
            "/var/run/docker.sock", "/run/docker.sock", "/etc/edgeward"} <= protected
    for secret in ("/etc/shadow", "/etc/ssh/ssh_host_ed25519_key", "/root/.ssh"):
        with pytest.raises(ElevatedOptionRefused, match="the host's secrets"):
            vet_create_options({"HostConfig": {"Binds": [f"{secret}:/s:ro"]}}, policy)
    assert vet_create_options({"HostConfig": {"Binds": ["/etc/ssl/certs:/etc/ssl/certs:ro"]}}, policy).options
    doc["allow_elevated_docker_permissions"] = True
    assert parse_runtime_settings(doc, tmp_path, tmp_path, Problems("t")).allow_elevated_docker_permissions
    assert host_views()[0] == "/"


def _check(tmp_path: Path, config_text: str) -> dict[str, dict[str, str]]:
    config = tmp_path / "config.toml"
    config.write_text(f'hostname = "dev1"\n{config_text}\n[moby_runtime]\nuri = "unix://{tmp_path}/no-engine.sock"\n')
    out = CliRunner().invoke(check, ["-c", str(config), "--state-dir", str(tmp_path / "state"),
                                     "--run-dir", str(tmp_path / "run"), "--json"])
    return {r["name"]: r for r in json.loads(out.stdout)}


@pytest.mark.parametrize("allow", [True, False])
def test_check_reports_whether_elevated_permissions_are_allowed(tmp_path: Path, allow: bool) -> None:
    rows = _check(tmp_path, f"allow_elevated_docker_permissions = {str(allow).lower()}")
    row = rows["elevated permissions"]
    assert "configuration" in rows and "allow_elevated_docker_permissions" not in rows["configuration"]["detail"]
    if allow:
        assert row["outcome"] == "warning" and "privileged" in row["detail"]
        assert "allow_elevated_docker_permissions = false" in row["fix"]
    else:  # no engine answers here: it cannot be told whether old privileged containers remain
        assert row["outcome"] == "warning" and "could not be asked" in row["detail"], row


def test_check_fails_when_the_agent_itself_would_be_refused(tmp_path: Path) -> None:
    rows = _check(tmp_path, '[agent]\nname = "edgeAgent"\ntype = "docker"\n[agent.config]\n'
                            'image = "mcr.microsoft.com/azureiotedge-agent:1.5"\n'
                            'createOptions = { HostConfig = { Binds = ["/var/run/docker.sock:/var/run/docker.sock"] } }')
    row = rows["elevated permissions"]
    assert row["outcome"] == "error" and "HostConfig.Binds[0]" in row["detail"], row


def _with(root: Path, *neighbours: HostBind) -> PrivilegePolicy:
    return replace(policy(root), neighbours=neighbours)


@pytest.mark.parametrize(("binds", "neighbours"), [
    (["/data/shared/d:/d:ro"], [HostBind("swapper", "/data/shared", True)]),  # inside another's writable bind
    (["/data/shared/../shared/d/x:/d"], [HostBind("swapper", "/data/shared", True)]),
    (["/data/deep:/d"], [HostBind("swapper", "/data/elsewhere/..", True)]),  # the neighbour named through a link
    (["/data/elsewhere:/d:ro"], [HostBind("swapper", "/data/deep", True)]),  # ours through a link: deep/er
    (["/data:/all"], [HostBind("victim", "/data/shared/d", False)]),  # a writable parent of another's bind
    (["/data:/all", "/data/shared:/s:ro"], []),  # this module's own other bind
    (["/data/shared:/s:ro", "/data:/all"], []),
])
def test_binds_nested_with_a_writable_bind_are_refused(root: Path, binds: list[str],
                                                        neighbours: list[HostBind]) -> None:
    with pytest.raises(ElevatedOptionRefused, match="symlink the engine follows"):
        vet_create_options({"HostConfig": {"Binds": binds}}, _with(root, *neighbours), "evil2")


@pytest.mark.parametrize(("binds", "neighbours"), [
    (["/data/shared:/s"], [HostBind("peer", "/data/shared", True)]),  # the same directory, shared writable
    (["/data/shared/d:/d:ro"], [HostBind("reader", "/data/shared", False)]),  # read-only parents swap nothing
    (["/data:/all:ro"], [HostBind("victim", "/data/shared/d", True)]),
    (["/data/shared/d:/d"], [HostBind("evil2", "/data/shared", True)]),  # its own registration (an update)
    (["/data/a:/a", "/data/b:/b"], [HostBind("other", "/data/ab", True)]),
])
def test_binds_not_nested_with_a_writable_bind_are_allowed(root: Path, binds: list[str],
                                                           neighbours: list[HostBind]) -> None:
    assert vet_create_options({"HostConfig": {"Binds": binds}}, _with(root, *neighbours), "evil2").options


def test_host_binds_reads_the_stored_options_of_a_module() -> None:
    stored = {"hostconfig": {"Binds": ["/a:/a", "/b:/b:ro", "volume:/v"],
                             "Mounts": [{"Type": "bind", "Source": "/c", "Target": "/c", "ReadOnly": True},
                                        {"Type": "bind", "Source": "/d", "Target": "/d"}]}}
    assert host_binds("m", stored) == [HostBind("m", "/a", True), HostBind("m", "/b", False),
                                       HostBind("m", "/c", False), HostBind("m", "/d", True)]
    assert host_binds("m", {"HostConfig": {"Binds": "/x:/x"}}) == []


@pytest.mark.parametrize(("mode", "refused"), [
    ("container:victim", True), ("CONTAINER:victim", True), ("container:" + "a" * 64, True),
    ("container:evil2", False), ("host", False), ("none", False), ("bridge", False), ("azure-iot-edge", False),
])
def test_network_mode_of_another_container_is_refused(root: Path, mode: str, refused: bool) -> None:
    options = {"HostConfig": {"NetworkMode": mode}}
    if refused:
        with pytest.raises(ElevatedOptionRefused, match=r"HostConfig\.NetworkMode"):
            vet_create_options(options, policy(root), "evil2")
    else:
        assert vet_create_options(options, policy(root), "evil2").options["HostConfig"]["NetworkMode"] == mode


def test_engine_paths_are_read_from_the_engine_command_line() -> None:
    argv = ["/usr/bin/dockerd", "--data-root", "/A", "--exec-root=/B", "-H", "unix:///srv/d.sock",
            "--host=tcp://0.0.0.0:2375", "--pidfile", "/P/d.pid", "-g", "/G", "--containerd=/C/c.sock",
            "--config-file", "/etc/d.json", "--bridge=none"]
    assert engine_paths_from_cmdline(argv) == ["/A", "/B", "/srv/d.sock", "/P/d.pid", "/G", "/C/c.sock",
                                               "/etc/d.json"]


def test_host_service_sockets_and_logs_are_protected(tmp_path: Path) -> None:
    settings = parse_runtime_settings({"moby_runtime": {"uri": f"unix://{tmp_path}/none.sock"}}, tmp_path / "s",
                                      tmp_path / "r", Problems("t"))
    strict = policy_for(settings, roots=("/",))
    for source in ("/run/systemd:/s:ro", "/run/dbus:/d:ro", "/var/run/dbus/system_bus_socket:/b:ro",
                   "/run/udev:/u:ro", "/run/user/0:/x:ro", "/var/log:/l", "/run/containerd:/c:ro",
                   "/var/lib/containerd:/c:ro", "/run/runc:/r:ro", "/run/containers:/c:ro", "/run/libpod:/c:ro",
                   "/dev/serial/by-id:/s", "/dev/bus/usb:/u"):
        with pytest.raises(ElevatedOptionRefused):
            vet_create_options({"HostConfig": {"Binds": [source]}}, strict)
    assert vet_create_options({"HostConfig": {"Binds": ["/var/log:/l:ro", "/dev/serial:/s:ro"]}}, strict).options


def test_config_and_key_files_named_by_the_config_are_protected(tmp_path: Path) -> None:
    """Wherever the operator keeps them: the config file itself, file:// keys and certs, their homedirs."""
    secrets = tmp_path / "secrets"
    config = tmp_path / "etc" / "config.toml"
    config.parent.mkdir()
    config.write_text(f"""hostname = "dev1"
trust_bundle_cert = "file://{secrets}/trust%20bundle.pem"
[provisioning]
source = "manual"
iothub_hostname = "hub.example.net"
device_id = "dev1"
[provisioning.authentication]
method = "x509"
identity_cert = "file://{secrets}/id.pem"
identity_pk = "file://{secrets}/id.key"
[edge_ca]
cert = "file://{tmp_path}/ca/edge-ca.pem"
pk = "file://{tmp_path}/ca/edge-ca.key"
[preloaded_keys]
other = "file://{tmp_path}/keys/other.key"
[aziot_keys]
homedir_path = "{tmp_path}/keystore"
pkcs11_lib_path = "{tmp_path}/vendor/libpkcs11.so"
[moby_runtime]
uri = "unix://{tmp_path}/none.sock"
""")
    settings = load_settings(config, tmp_path / "state", tmp_path / "run")
    strict = policy_for(settings.runtime, roots=("/",))
    for source in (config, config.parent, secrets, secrets / "id.key", secrets / "trust bundle.pem",
                   tmp_path / "ca", tmp_path / "keys/other.key", tmp_path / "keystore",
                   tmp_path / "vendor/libpkcs11.so"):
        with pytest.raises(ElevatedOptionRefused, match="configuration, keys or certificates"):
            vet_create_options({"HostConfig": {"Binds": [f"{source}:/x:ro"]}}, strict)
    assert vet_create_options({"HostConfig": {"Binds": [f"{tmp_path}/data:/x"]}}, strict).options
