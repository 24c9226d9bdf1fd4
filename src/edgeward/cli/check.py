"""`edgeward check`: is this device set up right, and if not, what to do about it. Each check says what it found
and, when it fails, how to fix it; exit 1 if any check fails (warnings alone exit 0)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiodocker
import aiohttp
import click
from aiodocker.exceptions import DockerError
from cryptography import x509
from rich.console import Console
from rich.table import Table

from ..certs.client import CertsClient
from ..certs.x509sign import handle_public_key, same_public_key
from ..config.problems import ConfigError
from ..daemon import DaemonSettings, load_settings, read_config
from ..http.errors import HttpError
from ..identity.settings import DpsProvisioning
from ..keys.client import KeysClient
from ..runtime.compose import make_engine
from ..runtime.edge_ca import EDGE_CA_CERT_ID, EDGE_CA_KEY_ID
from ..runtime.engine import ENGINE_LABEL, EngineError
from ..runtime.engines.proccgroup import cgroup2_mount
from ..runtime.privileges import ElevatedOptionRefused, policy_for, vet_create_options
from .paths import config_option, default_run_dir, default_state_dir, run_option, state_option
from .terminal_text import cell

__all__ = ["check"]

out = Console(emoji=False)
Outcome = Literal["ok", "warning", "error", "skipped"]
HOSTNAME = re.compile(r"^(?=.{1,64}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                      r"[A-Za-z0-9])?)*$")


@dataclass(frozen=True)
class Result:
    name: str
    outcome: Outcome
    detail: str
    fix: str = ""


Check = Callable[[DaemonSettings], Awaitable[list[Result]]]


async def check_hostname(s: DaemonSettings) -> list[Result]:
    name = s.identity.hostname
    if not HOSTNAME.match(name):
        return [Result("hostname", "error", f"{name!r} is not a valid DNS name of at most 64 characters",
                       "set `hostname` in the config to the device's DNS name (letters, digits, '-', '.')")]
    if len(name) > 64:
        return [Result("hostname", "error", "longer than 64 characters (an X.509 common name limit)")]
    return [Result("hostname", "ok", name)]


async def check_clock(_: DaemonSettings) -> list[Result]:
    now = dt.datetime.now(dt.UTC)
    if now.year < 2024:
        return [Result("clock", "error", f"the clock says {now:%Y-%m-%d}", "set the time (NTP): certificates "
                       "will not validate")]
    if shutil.which("timedatectl"):
        shown = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                               text=True, check=False).stdout.strip()
        if shown == "no":
            return [Result("clock", "warning", "not synchronized with NTP", "enable NTP: timedatectl set-ntp true")]
    return [Result("clock", "ok", f"{now:%Y-%m-%d %H:%M:%S} UTC")]


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None


async def check_permissions(s: DaemonSettings) -> list[Result]:
    results = []
    state = _mode(s.keys.homedir)
    if state is not None and state & 0o077:
        results.append(Result("key store permissions", "error", f"{s.keys.homedir} is {oct(state)}",
                              f"chmod 700 {s.keys.homedir}"))
    elif state is not None:
        results.append(Result("key store permissions", "ok", f"{s.keys.homedir} {oct(state)}"))
    for sock in (s.keys.socket_path, s.certs.socket_path, s.identity.socket_path, s.runtime.mgmt_socket):
        mode = _mode(sock)
        if mode is None:
            continue
        if not stat.S_ISSOCK(sock.stat().st_mode):
            results.append(Result(f"socket {sock.name}", "error", f"{sock} is not a socket",
                                  f"remove {sock} and restart Edgeward"))
    root = s.runtime.workload_root
    if root.is_dir():
        for d in root.iterdir():
            mode = _mode(d)
            if mode is not None and mode & 0o022:
                results.append(Result(f"workload dir {d.name}", "error", f"{d} is writable by others ({oct(mode)})",
                                      f"chmod 755 {d}"))
    return results or [Result("permissions", "ok", "nothing to check yet")]


async def check_services(s: DaemonSettings) -> list[Result]:
    results = []
    for name, path in (("keys service", s.keys.socket_path), ("certificates service", s.certs.socket_path),
                       ("identity service", s.identity.socket_path), ("management API", s.runtime.mgmt_socket)):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 3)
            writer.close()
            results.append(Result(name, "ok", str(path)))
        except (OSError, TimeoutError) as e:
            results.append(Result(name, "error", f"{path}: {e.__class__.__name__}",
                                  "start Edgeward: `edgeward run -c <config>` or `systemctl start edgeward-*`"))
    return results


async def check_certs(s: DaemonSettings) -> list[Result]:
    keys, certs = KeysClient(s.keys.socket_path), CertsClient(s.certs.socket_path)
    wanted = [(EDGE_CA_CERT_ID, EDGE_CA_KEY_ID)]
    wanted += [(cid, opts.key_id or cid) for cid, opts in s.certs.issuance.items() if "*" not in cid]
    if s.certs.local_ca is not None:
        wanted.append((s.certs.local_ca.cert, s.certs.local_ca.pk))
    results = []
    try:
        for cert_id, key_id in dict.fromkeys(wanted):
            try:
                leaf = x509.load_pem_x509_certificates((await certs.get_cert(cert_id)).encode())[0]
            except HttpError as e:
                results.append(Result(f"cert {cert_id}", "warning", f"not readable: {e.message}",
                                      "it is issued at start; check the certificates service log"))
                continue
            try:
                public = await handle_public_key(keys, await keys.load_key_pair(key_id))
                matches = same_public_key(public, leaf.public_key())
            except HttpError as e:
                results.append(Result(f"cert {cert_id}", "error", f"its key {key_id!r}: {e.message}",
                                      "check the keys service (HSM/TPM reachable?) and [[principal]] keys"))
                continue
            left = leaf.not_valid_after_utc - dt.datetime.now(dt.UTC)
            if not matches:
                results.append(Result(f"cert {cert_id}", "error", f"does not match its key {key_id!r}",
                                      f"delete cert {cert_id} so it is issued again for the current key"))
            elif left <= dt.timedelta(0):
                results.append(Result(f"cert {cert_id}", "error", f"expired {leaf.not_valid_after_utc:%Y-%m-%d}",
                                      "check renewal (auto_renew) and the issuer (EST/local CA) reachability"))
            elif left < dt.timedelta(days=7):
                results.append(Result(f"cert {cert_id}", "warning", f"expires in {left.days} days",
                                      "renewal should happen before; check the renewal log if it does not"))
            else:
                results.append(Result(f"cert {cert_id}", "ok", f"matches its key, expires "
                                                               f"{leaf.not_valid_after_utc:%Y-%m-%d}"))
    except OSError as e:
        results.append(Result("certificates", "skipped", f"services not reachable ({e.__class__.__name__})"))
    finally:
        await keys.close()
        await certs.close()
    return results


async def check_hardware(s: DaemonSettings) -> list[Result]:
    results = []
    if s.keys.pkcs11_lib_path:
        lib = Path(s.keys.pkcs11_lib_path)
        results.append(Result("PKCS#11 library", "ok" if lib.exists() else "error", str(lib),
                              "" if lib.exists() else "install the HSM vendor's library or fix pkcs11_lib_path"))
    tcti = s.keys.tpm_tcti or (s.tpm.tcti if s.tpm is not None else None)
    if tcti:
        try:
            from tpm2_pytss import ESAPI  # noqa: PLC0415

            ESAPI(tcti).close()
            results.append(Result("TPM", "ok", tcti))
        except Exception as e:
            results.append(Result("TPM", "error", f"{tcti}: {e}", "check the TPM device / swtpm and the tcti"))
    return results


async def check_engine(s: DaemonSettings) -> list[Result]:
    if s.runtime.engine == "process":  # nothing to reach; never open the running daemon's process state here
        bwrap = shutil.which("bwrap")
        results = [Result("module engine", "ok", f"host processes (sandbox: {'bubblewrap' if bwrap else 'none'})",
                          "" if bwrap else "install bubblewrap to sandbox host modules (createOptions Sandbox)")]
        mount = cgroup2_mount()
        if mount is None:
            results.append(Result("module cgroups", "warning", "no cgroup v2 hierarchy: a process a host module "
                                  "double-forks out of its tree outlives the module's stop and removal",
                                  "boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1, Debian 12's default)"))
        else:
            results.append(Result("module cgroups", "ok", f"cgroup v2 at {mount}: each host module runs in a cgroup "
                                  "of its own, killed with it (the runtime's log says so at start if it cannot "
                                  "make them)"))
        return results
    engine = make_engine(s.runtime)
    try:
        v = await engine.version()
        return [Result("module engine", "ok", f"{s.runtime.engine}: {v.get('name', '')} {v.get('version', '')}")]
    except EngineError as e:
        return [Result("module engine", "error", f"{s.runtime.engine}: {e.message}",
                       "start the container engine (dockerd / podman system service) or fix [moby_runtime] uri")]
    finally:
        await engine.close()


async def check_elevated(s: DaemonSettings) -> list[Result]:
    """IoT Edge's `iotedge check` does not report this; a device that lets deployments run privileged modules
    should say so where an operator looks."""
    if s.runtime.engine != "docker":
        if s.runtime.allow_elevated_docker_permissions:
            return [Result("elevated permissions", "warning",
                           "allow_elevated_docker_permissions = true: deployments may run host-process modules as "
                           "root (no User, User 0, a setuid executable), which is root on this device",
                           "set allow_elevated_docker_permissions = false in the config and apply it, unless a module "
                           "truly needs root")]
        return [Result("elevated permissions", "ok",
                       "allow_elevated_docker_permissions = false: host-process modules that would run as root are "
                       "refused (set it to true to allow them)")]
    agent = s.runtime.agent
    if agent is not None:
        try:
            vet_create_options(agent.create_options, policy_for(s.runtime))
        except ElevatedOptionRefused as e:
            return [Result("elevated permissions", "error", f"the edge agent ([agent]) cannot be created: {e.message}",
                           "remove that option from [agent.config] createOptions, or allow elevated permissions")]
    if s.runtime.allow_elevated_docker_permissions:
        return [Result("elevated permissions", "warning",
                       "allow_elevated_docker_permissions = true: deployments may give modules privileged mode, "
                       "added capabilities, host namespaces and binds of /proc, /sys, the engine's socket and "
                       "Edgeward's state (each is root on this device)",
                       "set allow_elevated_docker_permissions = false in the config and apply it, unless a module "
                       "truly needs them")]
    try:
        still = await _elevated_modules(s.runtime.docker_uri)
    except (DockerError, OSError, aiohttp.ClientError) as e:
        return [Result("elevated permissions", "warning", f"allow_elevated_docker_permissions = false, but the "
                       f"engine could not be asked which modules still have elevated permissions "
                       f"({e.__class__.__name__})", "start the container engine and run the check again")]
    if still:
        return [Result("elevated permissions", "error",
                       "allow_elevated_docker_permissions = false, but these modules were created while it was true "
                       f"and their containers still have elevated permissions: {'; '.join(still)}; Edgeward "
                       "refuses to start them",
                       "recreate each of them (update the deployment or remove and create the module)")]
    return [Result("elevated permissions", "ok",
                   "allow_elevated_docker_permissions = false: Privileged and CapAdd are stripped from new modules, "
                   "host namespaces and binds of host control surfaces are refused, and no module's container "
                   "has them (set it to true to allow them)")]


async def _elevated_modules(uri: str) -> list[str]:
    """Modules whose container, as the engine has it, is privileged or has added capabilities."""
    docker = aiodocker.Docker(url=uri)
    try:
        found = []
        for c in await docker.containers.list(all=True, filters={"label": [ENGINE_LABEL]}):
            raw = await docker.containers.get(c.id)
            host = raw._container.get("HostConfig") or {}
            what = [w for w, on in (("Privileged", host.get("Privileged")), ("CapAdd", host.get("CapAdd"))) if on]
            if what:
                found.append(f"{str(raw._container.get('Name', c.id)).lstrip('/')} ({', '.join(what)})")
        return found
    finally:
        await docker.close()


# The config reader's warnings that say a set key does nothing: unknown keys, keys "accepted ... not used", keys
# "ignored" because another decides, and container-only keys on a host-process device. Other warnings (a hostname
# too long for a certificate's CN) are about a value that does take effect; they stay in the "configuration" row.
_NO_EFFECT_WARNING = re.compile(r"^(?P<path>[^\s:]+): (?P<why>.*\b(ignored|not used|no effect|decides instead)\b.*)$")
NO_EFFECT_FIX = "remove it from the config (or meet the condition named) so the config says what the device does"


def split_warnings(warnings: tuple[str, ...]) -> tuple[list[tuple[str, str]], list[str]]:
    """The reader's warnings as (key path, why) for keys without effect, and the other warnings as they are."""
    no_effect: list[tuple[str, str]] = []
    others: list[str] = []
    for w in warnings:
        m = _NO_EFFECT_WARNING.match(w)
        if m:
            no_effect.append((m["path"], m["why"]))
        else:
            others.append(w)
    return no_effect, others


def _table(doc: Any, *path: str) -> dict[str, Any]:
    for key in path:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc if isinstance(doc, dict) else {}


def conditional_no_effect(doc: dict[str, Any], s: DaemonSettings) -> list[tuple[str, str]]:
    """Keys the reader accepts and the services read, but that only act under a condition this device does not
    meet (decided from what each service does with them, not from the key's name)."""
    found: list[tuple[str, str]] = []
    dps = s.identity.provisioning if isinstance(s.identity.provisioning, DpsProvisioning) else None
    if dps is None:  # identity/reprovisioning.py: only DPS provisions again
        source = _table(doc, "provisioning").get("source", "none")
        why = (f"provisioning is {source!r}, not DPS: there is nothing to provision again with "
               "(identity/reprovisioning.py)")
        # Dynamic and OnErrorOnly say what to do on an error, and IoT Edge's importer writes one of them for every
        # device: inert here, as under IoT Edge, and not worth a finding. AlwaysOnStartup asks for something this
        # device cannot do.
        if doc.get("auto_reprovisioning_mode") == "AlwaysOnStartup":
            found.append(("auto_reprovisioning_mode", why))
        if "always_reprovision_on_startup" in _table(doc, "provisioning"):
            found.append(("provisioning.always_reprovision_on_startup", why))
    prov = _table(doc, "provisioning")
    source = prov.get("source")
    other = {"manual": ("global_endpoint", "id_scope", "attestation", "payload"),
             "dps": ("connection_string", "iothub_hostname", "device_id", "authentication")}
    for key in other.get(source, ()) if isinstance(source, str) else ():
        if key in prov:
            found.append((f"provisioning.{key}", f'provisioning.source = "{source}": only '
                                                 f'{"DPS" if source == "manual" else "manual"} provisioning reads it'))
    if s.identity.provisioning is None:  # no device identity: no hub or DPS to call, no module identity to cache
        for key in ("cloud_timeout_sec", "cloud_retries", "prefer_module_identity_cache"):
            if key in doc:
                found.append((key, "no [provisioning]: the device has no cloud identity, so no IoT Hub or DPS "
                                   "call is made and no module identity is cached"))
    if "max_retries" in _table(doc, "watchdog") and s.runtime.agent is None:
        found.append(("watchdog.max_retries", "no [agent]: the watchdog has no edge agent to keep running "
                                              "(runtime/service.py check_agent)"))
    if "auth_key_index" in _table(doc, "tpm") and (dps is None or dps.auth != "tpm"):
        found.append(("tpm.auth_key_index", "only DPS provisioning with TPM attestation imports a key to that "
                                            "index; this device does not provision with TPM attestation"))
    est = _table(doc, "cert_issuance", "est")
    if est and not any(opts.method == "est" for opts in s.certs.issuance.values()):
        for key in est:
            found.append((f"cert_issuance.est.{key}", "no certificate is issued over EST here (no provisioning "
                                                      'identity_cert, [edge_ca] or [cert_issuance.<id>] with '
                                                      'method = "est")'))
    edge_ca = _table(doc, "edge_ca")
    if edge_ca.get("method") == "est" and "expiry_days" in edge_ca:  # the CSR carries no lifetime (RFC 7030)
        found.append(("edge_ca.expiry_days", 'edge_ca.method = "est": the EST server decides the lifetime of the '
                                             "certificates it issues"))
    est_auth = _table(doc, "cert_issuance", "est", "auth")
    if ("identity_auto_renew" in est and not {"identity_cert", "bootstrap_identity_cert"} & set(est_auth)
            and "cert_issuance.est.identity_auto_renew" not in {path for path, _ in found}):
        found.append(("cert_issuance.est.identity_auto_renew", "[cert_issuance.est.auth] has no EST identity "
                                                               "certificate (identity_cert or bootstrap_identity_cert)"
                                                               " to renew"))
    gc = _table(doc, "image_garbage_collection")
    if s.runtime.engine == "docker" and gc.get("enabled") is False:  # aziot-edged then runs no collection at all
        for key in ("cleanup_recurrence", "image_age_cleanup_threshold", "cleanup_time"):
            if key in gc:
                found.append((f"image_garbage_collection.{key}", "image_garbage_collection.enabled = false: no "
                                                                  "image is ever collected"))
    agent = s.runtime.agent
    if agent is not None and "auth" in _table(doc, "agent", "config"):
        if s.runtime.engine != "docker":
            found.append(("agent.config.auth", "modules run as host processes: the agent's executable is never "
                                               "pulled from a registry"))
        elif agent.pull_policy == "never":
            found.append(("agent.config.auth", 'agent.imagePullPolicy = "never": the agent\'s image is never '
                                               "pulled, so no registry is logged in to"))
    return found


async def check_no_effect(s: DaemonSettings) -> list[Result]:
    """Every key set in the config that changes nothing on this device, with why; an operator moving an IoT Edge
    config here must not believe a setting is in force when it is not."""
    doc: dict[str, Any] = dict(read_config(s.config_path)) if s.config_path is not None else {}
    found, _ = split_warnings(s.warnings)
    said = {path for path, _ in found}
    found += [(path, why) for path, why in conditional_no_effect(doc, s) if path not in said]
    if not found:
        source = str(s.config_path) if s.config_path is not None else "embedded defaults"
        return [Result("settings without effect", "ok", f"none: every key set in {source} takes effect here")]
    return [Result(f"no effect: {path}", "warning", why, NO_EFFECT_FIX) for path, why in found]


CHECKS: list[Check] = [check_no_effect, check_hostname, check_clock, check_permissions, check_services,
                       check_certs, check_hardware, check_engine, check_elevated]


@click.command()
@config_option
@state_option
@run_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def check(config: Path | None, state_dir: Path | None, run_dir: Path | None, as_json: bool) -> None:
    """Check the configuration, the running services, certificates, hardware and the module engine."""
    results: list[Result] = []
    try:
        settings = load_settings(config, state_dir or default_state_dir(), run_dir or default_run_dir())
        _, others = split_warnings(settings.warnings)  # keys without effect: one row each (check_no_effect)
        results.append(Result("configuration", "warning" if others else "ok",
                              "; ".join(others) or (str(config) if config else "embedded defaults"),
                              "fix the values named above" if others else ""))
    except ConfigError as e:
        results.append(Result("configuration", "error", "; ".join(e.problems), "fix the settings named"))
        settings = None
    if settings is not None:
        async def run_all() -> None:
            for c in CHECKS:
                try:
                    results.extend(await c(settings))
                except Exception as e:  # a check that crashes is a failed check, not a traceback
                    results.append(Result(c.__name__.removeprefix("check_"), "error", f"check failed: {e}"))
        asyncio.run(run_all())
    if as_json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        table = Table(title="edgeward check")
        for col in ("check", "", "found", "how to fix"):
            table.add_column(col)
        marks = {"ok": "[green]ok[/green]", "warning": "[yellow]warn[/yellow]", "error": "[red]FAIL[/red]",
                 "skipped": "skip"}
        for r in results:
            # certificate subjects, engine answers, module names, errors: shown as text ([tables] too), never obeyed
            table.add_row(cell(r.name), marks[r.outcome], cell(r.detail), cell(r.fix))
        out.print(table)
    if any(r.outcome == "error" for r in results):
        sys.exit(1)
