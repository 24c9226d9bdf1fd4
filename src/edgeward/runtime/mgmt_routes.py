"""HTTP handlers of IoT Edge's management API: attest the caller (edge agent or root) -> call the runtime."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..access.wiring import guard_attested_service
from ..attest.pipeline import Attestor
from ..config.problems import Problems
from ..digits import is_number
from ..http import RouteTable, build_app, read_json_object, reply_empty
from ..http.body import reply_object
from ..http.errors import BadRequest, HttpError, NotFound, UnprocessableEntity
from ..http.limits import UidLimiter
from ..http.peercred import on_connection_closed
from . import mgmt_wire as wire
from . import system
from .aliases import serve_trailing_slash_aliases
from .durations import BadTime, parse_since
from .engine import EngineError, LogOptions
from .identities import ModuleIdentities
from .model import ModuleConfig, parse_module_config, valid_module_name
from .service import ModuleRuntime

__all__ = ["MANAGEMENT", "Management", "build_management_app", "routes"]

routes = RouteTable(wire.API_VERSIONS)


@dataclass
class Management:
    runtime: ModuleRuntime
    attestor: Attestor
    identities: ModuleIdentities
    provisioning: str = "manual"
    reprovision: Callable[[], Awaitable[None]] | None = None


MANAGEMENT = web.AppKey("edgeward.runtime.management", Management)


async def _admitted(request: web.Request) -> Management:
    """The access guard decided who may call (the edge agent, host root); this re-checks, closest to the answer,
    that the attested process is still the one that connected."""
    mgmt = request.app[MANAGEMENT]
    await mgmt.attestor.attest(request)
    return mgmt


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not valid_module_name(name):
        raise BadRequest(f"invalid module name {name[:140]!r}")
    return name


async def _spec(request: web.Request) -> ModuleConfig:
    return (await _spec_as_sent(request))[0]


async def _spec_as_sent(request: web.Request) -> tuple[ModuleConfig, dict[str, Any]]:
    """The module spec, and the body it was read from (which the agent's self-update answer echoes)."""
    raw = await read_json_object(request)
    problems = Problems("module spec")
    config = parse_module_config(raw, problems, "body")
    if config is None:
        raise UnprocessableEntity("invalid module spec: " + "; ".join(problems.items))
    return config, raw


# modules -------------------------------------------------------------------------------------------------------
@routes.get("/modules", since="2018-06-28")
async def list_modules(request: web.Request) -> web.Response:
    mgmt = await _admitted(request)
    return reply_object({"modules": [wire.module_details(v) for v in await mgmt.runtime.list_modules()]})


@routes.post("/modules", since="2018-06-28")
async def create_module(request: web.Request) -> web.Response:
    mgmt = await _admitted(request)
    view = await mgmt.runtime.create_module(await _spec(request))
    return reply_object(wire.module_details(view), status=201)


@routes.get("/modules/{name}", since="2018-06-28")
async def get_module(request: web.Request) -> web.Response:
    mgmt = await _admitted(request)
    return reply_object(wire.module_details(await mgmt.runtime.get_module(_name(request))))


@routes.put("/modules/{name}", since="2018-06-28")
async def update_module(request: web.Request) -> web.Response:
    mgmt = request.app[MANAGEMENT]
    caller = await mgmt.attestor.attest(request)
    name = _name(request)
    config, raw = await _spec_as_sent(request)
    if config.name != name:
        raise BadRequest(f"the body names module {config.name}, the path {name}")
    start = request.query.get("start", "false").lower()
    if start not in ("true", "false"):
        raise BadRequest(f"start must be true or false, got {start[:20]!r}")
    reg = caller.registration
    if reg is not None and reg.system and reg.name == name:
        # The edge agent replacing itself: answered first, replaced after (service.update_self_later).
        await mgmt.runtime.update_self_later(config, start == "true", _closed(request))
        response = reply_object(wire.module_details_from_spec(raw, config, start == "true"), status=201)
        with contextlib.suppress(ConnectionResetError):  # gone already: the update goes on all the same
            await response.prepare(request)
            await response.write_eof()  # on its way before the replacement may stop the agent
        return response
    view = await mgmt.runtime.update_module(config, start == "true")
    return reply_object(wire.module_details(view), status=201)  # aziot-edged answers 201


def _closed(request: web.Request) -> asyncio.Future[None]:
    """Done when the request's connection has closed: the caller has read its answer (or gone)."""
    closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def done(_: object) -> None:
        if not closed.done():  # nor after the wait for it was given up (cancelled)
            closed.set_result(None)

    transport = request.transport
    if transport is None:
        done(None)
    else:
        on_connection_closed(transport, done)
    return closed


@routes.delete("/modules/{name}", since="2018-06-28")
async def delete_module(request: web.Request) -> web.Response:
    mgmt = await _admitted(request)
    await mgmt.runtime.remove_module(_name(request))
    return reply_empty()


@routes.post("/modules/{name}/prepareupdate", since="2019-01-30")
async def prepare_update(request: web.Request) -> web.Response:
    mgmt = await _admitted(request)
    name = _name(request)
    config = await _spec(request)
    if config.name != name:
        raise BadRequest(f"the body names module {config.name}, the path {name}")
    await mgmt.runtime.prepare_update(config)
    return reply_empty()


@routes.post("/modules/{name}/start", since="2018-06-28")
async def start_module(request: web.Request) -> web.Response:
    mgmt = await _admitted(request)
    await mgmt.runtime.start_module(_name(request))
    return reply_empty()


@routes.post("/modules/{name}/stop", since="2018-06-28")
async def stop_module(request: web.Request) -> web.Response:
    mgmt = await _admitted(request)
    await mgmt.runtime.stop_module(_name(request))
    return reply_empty()


@routes.post("/modules/{name}/restart", since="2018-06-28")
async def restart_module(request: web.Request) -> web.Response:
    mgmt = await _admitted(request)
    await mgmt.runtime.restart_module(_name(request))
    return reply_empty()


def _time(value: str | None, what: str) -> int | None:
    """`since`/`until` as aziot-edged reads them (see :mod:`.durations`); a time before 1970 means the beginning."""
    if value is None:
        return None
    try:
        seconds = parse_since(value, what)
    except BadTime as e:
        raise BadRequest(str(e)) from None
    return max(seconds, 0 if what == "since" else 1)


def _log_options(request: web.Request) -> LogOptions:
    q = request.query
    follow = q.get("follow", "false").lower()
    timestamps = q.get("timestamps", "false").lower()
    for key, value in (("follow", follow), ("timestamps", timestamps)):
        if value not in ("true", "false"):
            raise BadRequest(f"{key} must be true or false")
    tail_raw = q.get("tail", "all")
    tail: int | None = None
    if tail_raw != "all":
        if not is_number(tail_raw):
            raise BadRequest(f"tail must be a number of lines or 'all', got {tail_raw[:20]!r}")
        tail = int(tail_raw)
    return LogOptions(follow=follow == "true", tail=tail, since=_time(q.get("since"), "since"),
                      until=_time(q.get("until"), "until"), timestamps=timestamps == "true")


@routes.get("/modules/{name}/logs", since="2018-06-28")
async def module_logs(request: web.Request) -> web.StreamResponse:
    mgmt = await _admitted(request)
    name = _name(request)
    options = _log_options(request)
    await mgmt.runtime.get_module(name)  # 404 before the stream starts
    # aziot-edged labels the (Docker-framed, binary) stream text/plain; clients read it raw either way
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        async for chunk in mgmt.runtime.logs(name, options):
            await response.write(wire.frame(chunk))
    except (HttpError, EngineError, ConnectionResetError):
        pass  # the stream has started: all we can do is end it
    with contextlib.suppress(ConnectionResetError):  # the client left (stopped following): nothing to end
        await response.write_eof()
    return response


# identities ------------------------------------------------------------------------------------------------------
@routes.get("/identities", since="2018-06-28")
async def list_identities(request: web.Request) -> web.Response:
    mgmt = await _admitted(request)
    return reply_object({"identities": [wire.identity_body(i) for i in await mgmt.identities.list()]})


def _identity_name(raw: object, where: str) -> str:
    if not isinstance(raw, str) or not raw or len(raw) > 128 or "/" in raw or ".." in raw:
        raise UnprocessableEntity(f"{where} must be a module id (1-128 characters, no '/' or '..')")
    return raw


@routes.post("/identities", since="2018-06-28")
async def create_identity(request: web.Request) -> web.Response:
    mgmt = await _admitted(request)
    body = await read_json_object(request)
    module_id = _identity_name(body.get("moduleId"), "moduleId")
    managed_by = body.get("managedBy")
    if managed_by is not None and not isinstance(managed_by, str):
        raise UnprocessableEntity("managedBy must be a string")
    return reply_object(wire.identity_body(await mgmt.identities.ensure(module_id, managed_by or "IotEdge")))


@routes.put("/identities/{name}", since="2018-06-28")
async def update_identity(request: web.Request) -> web.Response:
    mgmt = await _admitted(request)
    module_id = _identity_name(request.match_info["name"], "the module id")
    body = await read_json_object(request)
    managed_by = body.get("managedBy")
    if managed_by is not None and not isinstance(managed_by, str):
        raise UnprocessableEntity("managedBy must be a string")
    existing = await mgmt.identities.get(module_id)
    if existing is None:
        raise NotFound(f"module identity {module_id} not found")
    return reply_object(wire.identity_body(await mgmt.identities.ensure(module_id, managed_by)))


@routes.delete("/identities/{name}", since="2018-06-28")
async def delete_identity(request: web.Request) -> web.Response:
    mgmt = await _admitted(request)
    await mgmt.identities.delete(_identity_name(request.match_info["name"], "the module id"))
    return reply_empty()


# system ---------------------------------------------------------------------------------------------------------
async def _engine_version(mgmt: Management) -> dict[str, str]:
    try:
        return dict(await mgmt.runtime.engine.version())
    except EngineError:
        return {}


@routes.get("/systeminfo", since="2018-06-28")
async def system_info(request: web.Request) -> web.Response:
    mgmt = await _admitted(request)
    return reply_object(system.system_info(await _engine_version(mgmt), mgmt.provisioning,
                                                mgmt.reprovision is not None))


@routes.get("/systeminfo/resources", since="2019-11-05")
async def system_resources(request: web.Request) -> web.Response:
    mgmt = await _admitted(request)
    stats = {}
    for view in await mgmt.runtime.list_modules():
        if view.status is not None and view.status.state == "running":
            try:
                stats[view.registration.name] = await mgmt.runtime.stats(view.registration.name)
            except HttpError:
                continue
    settings = mgmt.runtime.settings
    body = system.resources([settings.home, settings.run_dir], json.dumps(list(stats.values())))
    return reply_object(body)


def _flag(raw: str | None, name: str) -> bool:
    """A boolean query parameter: the agent's generated client sends "true"/"false"."""
    if raw is None:
        return False
    if raw.lower() not in ("true", "false"):
        raise BadRequest(f"invalid parameter: {name} must be true or false, got {raw[:20]!r}")
    return raw.lower() == "true"


@routes.get("/systeminfo/supportbundle", since="2020-07-07")
async def support_bundle(request: web.Request) -> web.Response:
    """A zip of what a support engineer needs: system info, registrations (without registry credentials) and
    the recent logs of every module. Bounded in size: at most 2,000 lines per module."""
    mgmt = await _admitted(request)
    since = _time(request.query.get("since"), "since")
    until = _time(request.query.get("until"), "until")
    edge_only = _flag(request.query.get("edge_runtime_only"), "edge_runtime_only")
    import zipfile  # noqa: PLC0415 -- only a support bundle needs it (about 0.3 MB held by every idle daemon)

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("systeminfo.json", json.dumps(system.system_info(
            await _engine_version(mgmt), mgmt.provisioning, mgmt.reprovision is not None), indent=2))
        views = await mgmt.runtime.list_modules()
        if edge_only:  # aziot's support bundle: the edge runtime's modules only, no customer module's logs
            views = [v for v in views if v.registration.system or v.registration.name == "edgeHub"]
        z.writestr("modules.json", json.dumps([wire.module_details(v) for v in views], indent=2))
        for view in views:
            lines = []
            try:
                async for chunk in mgmt.runtime.logs(view.registration.name,
                                                     LogOptions(tail=2000, since=since, until=until,
                                                                timestamps=True)):
                    lines.append(chunk.data)
            except HttpError as e:
                lines.append(f"(logs unavailable: {e.message})\n".encode())
            z.writestr(f"logs/{view.registration.name}.log", b"".join(lines))
    return web.Response(body=buf.getvalue(), content_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="support_bundle_{int(time.time())}'
                                                        f'.zip"'})


@routes.post("/device/reprovision", since="2019-10-22")
async def reprovision(request: web.Request) -> web.Response:
    mgmt = await _admitted(request)
    if mgmt.reprovision is None:
        raise BadRequest("this device has no cloud provisioning to redo")
    await mgmt.reprovision()
    return reply_empty()


# The spec's path of the identity list is `/identities/` (the edge agent's generated client calls it so); aziot-edged
# serves both forms of these collection routes (old diagnostics images call `/modules/`).
TRAILING_SLASH_ALIASES = (("GET", "/modules"), ("POST", "/modules"), ("GET", "/identities"), ("POST", "/identities"))


def build_management_app(mgmt: Management, limiter: UidLimiter | None = None) -> web.Application:
    """The management API, behind the access table's guard (which admits the edge agent and host root only)."""
    app = build_app(routes, limiter=limiter)
    serve_trailing_slash_aliases(app, TRAILING_SLASH_ALIASES)
    app[MANAGEMENT] = mgmt
    return guard_attested_service(app, "mgmt", mgmt.attestor)

