"""The request log costs nothing at the default level: its middleware is installed only when debug logging is on
as the app is built."""

from __future__ import annotations

import logging

from edgeward.http.requestlog import request_log
from edgeward.http.server import RouteTable, build_app


def test_request_log_middleware_is_installed_only_when_debug_logging_is_on() -> None:
    logger = logging.getLogger("edgeward.requests")
    before = logger.level
    try:
        logger.setLevel(logging.INFO)
        assert request_log not in build_app(RouteTable(["2020-09-01"])).middlewares
        logger.setLevel(logging.DEBUG)
        assert build_app(RouteTable(["2020-09-01"])).middlewares[0] is request_log  # outermost: the final status
    finally:
        logger.setLevel(before)
