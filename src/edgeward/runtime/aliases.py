"""Collection routes served with and without a trailing slash, as aziot-edged serves them.

aziot-edged matches `/modules/` and `/identities/` as well as the bare paths (the management spec even names
`/identities/`, so the edge agent's generated client calls that form); aiohttp matches paths exactly. The alias gets
the very handler of the declared route, api-version check included, and the declared route table stays one entry per
route (what the OpenAPI documents and the access table list).
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

__all__ = ["serve_trailing_slash_aliases"]


def serve_trailing_slash_aliases(app: web.Application, routes: Iterable[tuple[str, str]]) -> None:
    """Serve each (method, path) of `app` also at `path + "/"`."""
    handlers = {(r.method, r.resource.canonical): r.handler for r in app.router.routes() if r.resource is not None}
    for method, path in routes:
        app.router.add_route(method, path + "/", handlers[(method, path)])
