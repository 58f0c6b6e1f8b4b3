"""Noticing that a request's client has left, so that its work stops and its queued images are dropped."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request


def client_gone(request: Request) -> Callable[[], Awaitable[None]]:
    """An awaitable factory that returns once the client disconnects. Only for after the body is read: it consumes
    the request's ASGI messages."""

    async def wait() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return wait
