"""A 500 is Edgeward's own bug, and its traceback is what fixes it; but a caller that can provoke one can provoke
it in a loop. Found by the session-11 review: 2.1 KB of traceback per request, 0.85 MB/s from one client, enough
for journald's rate limit to drop other units' lines (refusals among them). The first traceback per route and
exception type per interval is kept; repeats become one line with their count."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edgeward.http import RouteTable, build_app

V = "2020-09-01"


def app_that_fails() -> web.Application:
    routes = RouteTable([V])

    @routes.get("/boom/{n}", since=V)
    async def boom(request: web.Request) -> web.Response:
        raise ValueError(f"bug number {request.match_info['n']}")

    @routes.get("/other", since=V)
    async def other(request: web.Request) -> web.Response:
        raise KeyError("another bug")

    return build_app(routes)


async def test_repeated_500s_log_one_traceback_then_a_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with TestServer(app_that_fails(), host="127.0.0.1") as server, aiohttp.ClientSession() as s:
        for n in range(50):  # a caller varying the path does not get a traceback per path
            async with s.get(server.make_url(f"/boom/{n}?api-version={V}")) as r:
                assert r.status == 500 and (await r.json()) == {"message": "internal error; see the service log"}
        async with s.get(server.make_url(f"/other?api-version={V}")) as r:
            assert r.status == 500
    ours = [r for r in caplog.records if r.name.startswith("edgeward") and r.levelno >= logging.ERROR]
    with_traceback = [r for r in ours if r.exc_info]
    assert len(with_traceback) == 2  # one per route and exception type
    assert {r.exc_info[0] for r in with_traceback if r.exc_info} == {ValueError, KeyError}
    assert len(ours) <= 3 and len(caplog.text) < 10_000


async def test_a_full_or_read_only_state_logs_one_line_per_route_not_one_per_request(
        caplog: pytest.LogCaptureFixture) -> None:
    """Found while fixing h/brk13a a01: a writing request on a full (or read-only) state directory logged an ERROR
    line each, which any caller could repeat at will, past journald's rate limit. Now the first per route is
    logged, the rest go to DEBUG and are counted in one summary."""
    import errno

    from edgeward.http import server

    routes = RouteTable([V])

    @routes.post("/full/{n}", since=V)
    async def full(request: web.Request) -> web.Response:
        raise OSError(errno.ENOSPC, "No space left on device")

    @routes.post("/ro", since=V)
    async def read_only(request: web.Request) -> web.Response:
        raise OSError(errno.EROFS, "Read-only file system")

    caplog.set_level(logging.DEBUG, logger="edgeward")
    async with TestServer(build_app(routes), host="127.0.0.1") as srv, aiohttp.ClientSession() as s:
        for n in range(100):
            async with s.post(srv.make_url(f"/full/{n}?api-version={V}")) as r:
                assert r.status == 507
            async with s.post(srv.make_url(f"/ro?api-version={V}")) as r:
                assert r.status == 503
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and errors[0].startswith("no space left for POST /full/0") and (
        errors[1].startswith("read-only state for POST /ro")), errors
    caplog.clear()
    server._STATE_ERRORS.flush()  # the interval's end
    summary = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(summary) == 1 and summary[0].startswith("198 more 'state directory full or read-only' lines"), summary
