"""Watching a request's connection while its work runs, so that a client who leaves costs no inference."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from service.errors import ClientDisconnected

T = TypeVar("T")


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it if the client disconnects first (its queued images are then dropped)."""
    task = asyncio.ensure_future(work)

    async def client_left() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(client_left())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise ClientDisconnected("the client disconnected before its images were classified")
    finally:
        watcher.cancel()
        task.cancel()
