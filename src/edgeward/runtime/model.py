"""A module as the management API and `[agent]` describe it, validated once for both."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config.problems import Problems

__all__ = ["MODULE_NAME", "ModuleConfig", "hub_identity_name", "parse_module_config", "valid_module_name",
           "workload_caller_name"]

# A module name becomes a container name, a directory name and a URL path segment, so it is held to what all three
# accept: Docker's container-name rule (which IoT Hub module ids of deployed modules also follow), no "..".
MODULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ModuleConfig:
    name: str
    image: str
    type: str = "docker"
    create_options: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    pull_policy: Literal["on-create", "never"] = "on-create"
    auth: Mapping[str, Any] | None = None  # registry credentials; kept out of logs and the registration

    def to_wire(self) -> dict[str, Any]:
        """The management API's ModuleSpec shape (auth is never echoed)."""
        return {"name": self.name, "type": self.type, "imagePullPolicy": self.pull_policy,
                "config": {"settings": {"image": self.image, "createOptions": dict(self.create_options)},
                           "env": [{"key": k, "value": v} for k, v in self.env.items()]}}


def valid_module_name(name: str) -> bool:
    return bool(MODULE_NAME.fullmatch(name)) and ".." not in name


def hub_identity_name(module: str, system: bool) -> str:
    """The module's identity in IoT Hub. The edge runtime's two modules are "$edgeAgent" and "$edgeHub" there (the
    agent's ModuleIdentityHelper maps module edgeHub to identity $edgeHub, creates it under that name and gives the
    module IOTEDGE_MODULEID=$edgeHub): the hub keeps their twins (the deployment, edgeHub's routes) under those
    names, so a module "edgeHub" running as identity "edgeHub" would never see its routes."""
    if system:
        return "$edgeAgent"
    return "$edgeHub" if module == "edgeHub" else module


def workload_caller_name(path_name: str) -> str:
    """The module a workload path names: the SDKs put IOTEDGE_MODULEID there, which is "$edgeAgent"/"$edgeHub"
    for the runtime's own modules; aziot-edged drops the leading `$` before it looks for the caller's module."""
    return path_name.lstrip("$")


def _env(raw: Any, where: str, p: Problems) -> dict[str, str]:
    if raw is None:
        return {}
    out: dict[str, str] = {}
    if isinstance(raw, Mapping):
        items = list(raw.items())
    elif isinstance(raw, list) and all(isinstance(e, Mapping) and "key" in e for e in raw):
        items = [(e["key"], e.get("value", "")) for e in raw]
    else:
        p.add(where, raw, 'a table of NAME = "value", or a list of {key, value}')
        return {}
    for key, given in items:
        # the deployment manifest's {"value": ...} form
        value = given["value"] if isinstance(given, Mapping) and "value" in given else given
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            p.add(f"{where}.{key}", key, "an environment variable name")
        elif not isinstance(value, str | int | float | bool):
            p.add(f"{where}.{key}", value, "a string")
        elif "\0" in str(value):
            p.add(f"{where}.{key}", "<contains NUL>", "a string without NUL bytes")
        else:
            out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def parse_module_config(raw: Mapping[str, Any], p: Problems, where: str) -> ModuleConfig | None:
    """Validate a ModuleSpec-shaped mapping; every problem goes to `p` (none raised), None if unusable."""
    before = len(p.items)
    name = raw.get("name")
    if not isinstance(name, str) or not valid_module_name(name):
        p.add(f"{where}.name", name, "a module name: 1-128 letters, digits, '_', '.' or '-', starting with a "
                                     "letter or digit, no '..'")
    type_ = raw.get("type", "docker")
    if type_ not in ("docker", "process"):
        p.add(f"{where}.type", type_, '"docker" (or "process" for host-process modules)')
    config = raw.get("config")
    if not isinstance(config, Mapping):
        p.add(f"{where}.config", config, "a table with settings (image, createOptions) and env")
        config = {}
    # The management API nests image and createOptions in config.settings (edgelet's wire form); IoT Edge's
    # `[agent.config]` puts them in config itself. Both are accepted.
    settings_where = f"{where}.config"
    settings = config
    if "settings" in config:
        settings, settings_where = config["settings"], f"{where}.config.settings"
        if not isinstance(settings, Mapping):
            p.add(settings_where, settings, "a table with image and createOptions")
            settings = {}
    image = settings.get("image")
    if not isinstance(image, str) or not image.strip() or len(image) > 1024:
        p.add(f"{settings_where}.image", image, "an image reference (or an executable path for process modules)")
    options: Any = settings.get("createOptions", {})
    if isinstance(options, str):
        try:
            options = json.loads(options) if options.strip() else {}
        except json.JSONDecodeError as e:
            p.add(f"{settings_where}.createOptions", options[:80], f"Docker create options as JSON ({e.msg})")
            options = {}
    if not isinstance(options, Mapping):
        p.add(f"{settings_where}.createOptions", options, "an object of Docker create options")
        options = {}
    auth = settings.get("auth")
    if auth is not None and not isinstance(auth, Mapping):
        p.add(f"{settings_where}.auth", "<redacted>", "a table with username, password, serveraddress")
        auth = None
    # aziot-edged reads the policy case-insensitively: the spec's enum (and the edge agent) say "On-Create" and
    # "Never", its own docs and config "on-create" and "never".
    given_pull = raw.get("imagePullPolicy", "on-create")
    pull = given_pull.lower() if isinstance(given_pull, str) else given_pull
    if pull not in ("on-create", "never"):
        p.add(f"{where}.imagePullPolicy", given_pull, '"on-create" or "never" (in any letter case)')
    env = _env(config["env"], f"{where}.config.env", p) if "env" in config else _env(raw.get("env"), f"{where}.env", p)
    if len(p.items) > before:
        return None
    assert isinstance(name, str) and isinstance(image, str)
    return ModuleConfig(name=name, image=image, type=str(type_), create_options=dict(options), env=env,
                        pull_policy="never" if pull == "never" else "on-create", auth=auth)
