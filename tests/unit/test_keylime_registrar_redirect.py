"""The registrar's agent port is plain HTTP: a redirect from it (or from whoever answers in its place) is refused, not
followed, so the agent's EK, AK and activation tag never go to a host the configuration did not name."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edgeward.keylime.registrar import API_VERSION, RegistrarError, activate


@pytest.mark.asyncio
async def test_a_redirect_from_the_registrar_is_not_followed() -> None:
    seen: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        seen.append(request.path)
        raise web.HTTPTemporaryRedirect("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"code": 200, "status": "Success", "results": {}})

    app = web.Application()
    app.router.add_post("/elsewhere", elsewhere)
    app.router.add_route("*", "/{tail:.*}", moved)
    async with TestServer(app, host="127.0.0.1") as server:
        with pytest.raises(RegistrarError, match="307"):
            await activate(str(server.make_url("")).rstrip("/"), "d432fbb3-d2f1-4a97-9ef7-75bd81c00000", "tag")
    assert seen == [f"/v{API_VERSION}/agents/d432fbb3-d2f1-4a97-9ef7-75bd81c00000/activate"]
