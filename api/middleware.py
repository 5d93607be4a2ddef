"""One ASGI middleware around the app: body-size cap, metrics and a log line per request.

Plain ASGI rather than ``BaseHTTPMiddleware`` (which costs a task and a stream per request).
The log line names the route template (``/v1/users/{user_id}/segment``), never the raw path,
so logs carry no platform user ids.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import ApiMetrics

log = logging.getLogger("strata.api")


class _BodyTooLarge(Exception):
    pass


class RequestMiddleware:
    """Caps request bodies at ``max_body_bytes`` (413; ``path_limits`` names paths with a
    cap of their own) and records every request."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ApiMetrics,
        max_body_bytes: int,
        path_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]
        started = [False]
        limit = self.path_limits.get(scope["path"], self.max_body_bytes)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                started[0] = True
            await send(message)

        received = [0]

        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > limit:
                    raise _BodyTooLarge
            return message

        try:
            length = _content_length(scope)
            if length is not None and length > limit:
                await _too_large(send_wrapper, limit)
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        except _BodyTooLarge:
            if started[0]:
                raise
            await _too_large(send_wrapper, limit)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - start
            self.metrics.requests.labels(scope["method"], template, str(status[0])).inc()
            self.metrics.latency.labels(template).observe(elapsed)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s %s %d %.2fms", scope["method"], template, status[0], elapsed * 1e3)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Any, limit: int) -> None:
    body = json.dumps({"detail": f"request body over {limit} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
