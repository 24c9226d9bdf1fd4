"""How [connect], [listen] and [image_garbage_collection] read: where each socket is, what each module is told, and
when image collection runs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path, PurePosixPath
from typing import Any

from edgeward.config.problems import Problems
from edgeward.runtime.image_gc import DAY, parse_image_gc, seconds_until
from edgeward.runtime.settings import RuntimeSettings, parse_runtime_settings


def _settings(doc: dict[str, Any], tmp_path: Path) -> RuntimeSettings:
    p = Problems()
    s = parse_runtime_settings(doc, tmp_path / "state", tmp_path / "run", p)
    p.raise_if_any()
    return s


def test_defaults_keep_edgewards_layout(tmp_path: Path) -> None:
    s = _settings({"moby_runtime": {"uri": "unix:///var/run/docker.sock"}}, tmp_path)
    assert s.mgmt_socket == tmp_path / "run" / "mgmt" / "mgmt.sock"
    assert s.container_workload_socket == PurePosixPath("/var/run/iotedge/workload.sock")
    assert s.container_mgmt_socket == PurePosixPath("/var/run/iotedge-mgmt/mgmt.sock")
    assert not s.agent_mgmt_in_workload_dir and s.workload_socket_name == "workload.sock"


def test_iotedge_layout_puts_the_agents_management_socket_in_its_workload_directory(tmp_path: Path) -> None:
    s = _settings({"moby_runtime": {}, "connect": {"workload_uri": "unix:///my/own/iotedge.workload.sock",
                                                   "management_uri": "unix:///my/own/iotedge.mgmt.sock"},
                   "listen": {"management_uri": "unix:///srv/edge/mgmt.sock",
                              "workload_uri": "fd://aziot-edged.workload.socket"}}, tmp_path)
    assert s.agent_mgmt_in_workload_dir and s.workload_socket_name == "iotedge.workload.sock"
    assert s.mgmt_socket == Path("/srv/edge/mgmt.sock")
    assert s.listen_workload_uri == "fd://aziot-edged.workload.socket"


def test_host_process_modules_keep_the_host_socket_name(tmp_path: Path) -> None:
    s = _settings({"connect": {"workload_uri": "unix:///my/own/iotedge.workload.sock"}}, tmp_path)
    assert s.engine == "process" and s.workload_socket_name == "workload.sock"


def test_fd_uri_takes_names_and_numbers_but_connect_takes_only_paths(tmp_path: Path) -> None:
    p = Problems()
    parse_runtime_settings({"listen": {"management_uri": "fd://3", "workload_uri": "fd://a:b"},
                            "connect": {"workload_uri": "unix:///x/../etc/w.sock", "management_uri": "unix:///"}},
                           tmp_path, tmp_path, p)
    assert [i.split(" = ")[0] for i in p.items] == ["connect.workload_uri", "connect.management_uri",
                                                    "listen.workload_uri"]


def test_image_gc_reads_humantime_and_hhmm() -> None:
    p = Problems()
    s = parse_image_gc({"image_garbage_collection": {"cleanup_recurrence": "1week", "cleanup_time": "23:59",
                                                     "image_age_cleanup_threshold": "1h 30m", "enabled": False}}, p)
    assert not p.items and (s.recurrence, s.threshold, s.cleanup_minute, s.enabled) == (7 * DAY, 5400, 1439, False)
    assert parse_image_gc({}, p) == parse_image_gc({"image_garbage_collection": {
        "cleanup_recurrence": "1d", "image_age_cleanup_threshold": "7d", "cleanup_time": "00:00"}}, p)


def test_seconds_until_the_next_cleanup_time() -> None:
    noon = dt.datetime(2026, 12, 2, 12, 0)
    assert seconds_until(12 * 60 + 30, noon) == 1800
    assert seconds_until(12 * 60, noon) == DAY  # it is now: the next one is tomorrow's
    assert seconds_until(0, noon) == 12 * 3600


def test_container_settings_on_a_host_process_device_are_said_to_have_no_effect(tmp_path: Path) -> None:
    p = Problems()
    parse_runtime_settings({"connect": {"workload_uri": "unix:///var/run/iotedge/workload.sock"},
                            "moby_runtime": {"network": "azure-iot-edge"}, "image_garbage_collection": {},
                            "edgeward": {"runtime": {"engine": "process"}}}, tmp_path, tmp_path, p)
    assert not p.items
    assert [w.split(":")[0] for w in p.warnings] == ["connect.workload_uri", "moby_runtime.network",
                                                     "image_garbage_collection"]


def test_a_connect_path_directly_under_root_is_refused(tmp_path: Path) -> None:
    p = Problems()
    parse_runtime_settings({"connect": {"workload_uri": "unix:///workload.sock"}}, tmp_path, tmp_path, p)
    assert p.items == ["connect.workload_uri = 'unix:///workload.sock': expected a unix:///absolute/path URI in a "
                       "directory other than / (it is mounted in containers)"]
