"""The HTTP edge of the server: bodies read within a limit, JSON required, and a last-resort 500.

A connection should outlive any error on it: a keep-alive client sends its next request on the same socket.
So an early refusal (401, 415, 429, 413) first reads and drops the rest of the body, up to twice the limit —
the HTTP parser can only start the next request once this one's body is consumed — and only a body too large
to drain closes the connection, saying so (`Connection: close`). An unexpected exception becomes an
OpenAI-style JSON 500 instead of Starlette's plain text followed by a dropped connection.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from .openai_protocol import APIError

log = logging.getLogger("minimind_v.server")


class BodyReader:
    """Reads one request's body from the ASGI `receive` channel, keeping track of whether it is all in."""

    def __init__(self, request: Any, limit: int):
        self.receive, self.limit, self.complete = request.receive, limit, False
        self.declared = request.headers.get("content-length", "")

    async def read(self) -> bytes:
        """The whole body, or 413 once it is larger than the limit (before it is all in memory)."""
        if self.declared.isdigit() and int(self.declared) > self.limit:
            raise await self.refuse(APIError(413, f"request body of {self.declared[:20]} bytes is over the limit "
                                                  f"of {self.limit}", code="body_too_large"))
        body = bytearray()
        while not self.complete:
            body += await self._next()
            if len(body) > self.limit:
                raise await self.refuse(APIError(413, f"request body is over the limit of {self.limit} bytes",
                                                 code="body_too_large"))
        return bytes(body)

    async def refuse(self, e: APIError) -> APIError:
        """Drop the rest of the body (up to twice the limit, read and forgotten piece by piece) so the connection
        can go on; `e`, marked to close the connection when that was not enough."""
        dropped = 0
        while not self.complete and dropped <= 2 * self.limit:
            dropped += len(await self._next())
        e.close_connection = not self.complete
        return e

    async def _next(self) -> bytes:
        message = await self.receive()
        if message["type"] != "http.request":  # the client went away
            self.complete = True
            raise APIError(400, "the client disconnected", code="client_disconnected")
        self.complete = not message.get("more_body", False)
        return message.get("body", b"")


def require_json(request: Any) -> None:
    """POSTs must say they are JSON: a web page can send text/plain to a local server without asking first
    (no CORS preflight, so no key-less server on localhost is safe otherwise), but not application/json."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise APIError(415, f"Content-Type must be application/json, got {kind[:60]!r}", None,
                       "unsupported_media_type")


class LastResort:
    """ASGI middleware: an unexpected exception becomes an OpenAI-style JSON 500 on a connection that stays
    open (Starlette's own handler answers in plain text and then re-raises, which closes the connection)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception("unexpected error serving %s %s", scope.get("method"), scope.get("path"))
            if started:  # mid-stream: nothing left to say in HTTP terms
                raise
            body = APIError(500, "the server failed to answer this request", None, "internal_error",
                            "server_error").json()
            await send({"type": "http.response.start", "status": 500, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
