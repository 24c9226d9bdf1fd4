"""What the device is and how loaded it is: systeminfo and systeminfo/resources of the management API."""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["edgeward_version", "resources", "system_info"]

_STARTED = time.monotonic()


def edgeward_version() -> str:
    # importlib.metadata (with zipfile and csv, about 0.7 MB) is loaded when systeminfo is first asked, not at start
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("edgeward")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def _os_release() -> Mapping[str, str]:
    out: dict[str, str] = {}
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value.strip().strip('"')
    return out


def _meminfo(field: str) -> int:
    """A /proc/meminfo field in bytes (0 when unreadable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _total_memory() -> int:
    return _meminfo("MemTotal")


def _available_memory() -> int:
    return _meminfo("MemAvailable")


def system_info(engine_version: Mapping[str, str], provisioning: str, dynamic_reprovisioning: bool) -> dict[str, Any]:
    release = _os_release()
    arch = {"x86_64": "x86_64", "aarch64": "aarch64", "armv7l": "armv7l"}.get(platform.machine(), platform.machine())
    ours = edgeward_version()
    return {
        "osType": "linux",
        "architecture": arch,
        "version": ours,
        "provisioning": {"type": provisioning, "dynamicReprovisioning": dynamic_reprovisioning,
                         "alwaysReprovisionOnStartup": False},
        "server_version": engine_version.get("version", ""),
        "kernel_version": platform.release(),
        "operating_system": release.get("NAME", "Linux"),
        "operating_system_version": release.get("VERSION_ID", ""),
        "operating_system_variant": release.get("VARIANT_ID", ""),
        "operating_system_build": release.get("BUILD_ID", ""),
        "cpus": os.cpu_count() or 1,
        "virtualized": "unknown",
        "product_info": f"edgeward/{ours}",
        "total_memory": _total_memory(),
    }


def _uptime() -> int:
    try:
        return int(float(Path("/proc/uptime").read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return 0


def resources(disk_paths: list[Path], docker_stats: str) -> dict[str, Any]:
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    total = _total_memory()
    disks = []
    for path in disk_paths:
        try:
            usage = shutil.disk_usage(path)
        except OSError:
            continue
        disks.append({"name": str(path), "available_space": usage.free, "total_space": usage.total,
                      "file_system": "unknown", "file_type": "unknown"})
    return {
        "host_uptime": _uptime(),
        "process_uptime": int(time.monotonic() - _STARTED),
        "used_cpu": round(min(load, 1.0) * 100, 2),
        "used_ram": max(total - _available_memory(), 0),
        "total_ram": total,
        "disks": disks,
        "docker_stats": docker_stats,
    }
