"""Hostile clients on raw sockets, for the reliability benchmark and the soak: slow and incomplete requests, and
the uploads that cost a server the most memory. Each reports what the server did and when, from the monotonic
clock; none of them raises on a refused or reset connection."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Closed:
    """How a hostile connection ended: the status the server answered (None: closed without one) and when."""

    kind: str
    status: int | None
    seconds: float
    """From the connection's start to the server closing it (or the client giving up)."""


async def _read_status_until_closed(reader: asyncio.StreamReader, limit_s: float) -> int | None:
    data = b""
    try:
        async with asyncio.timeout(limit_s):
            while chunk := await reader.read(65536):
                data += chunk
    except (TimeoutError, OSError):
        pass
    if data.startswith(b"HTTP/1.1 "):
        return int(data[9:12])
    return None


async def slow_request(host: str, port: int, kind: str, *, limit_s: float = 120.0, interval_s: float = 1.0) -> Closed:
    """One hostile connection of `kind` that sends as little as it can until the server closes it:

    - ``idle``: connects and sends nothing;
    - ``slow-head``: sends a request head one byte every `interval_s`;
    - ``slow-body``: a complete head declaring 100 kB, then the body one byte every `interval_s`;
    - ``short-body``: a head declaring 100 kB, 10 bytes of body, then nothing.
    """
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return Closed(kind, None, time.monotonic() - started)
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    status_task = asyncio.ensure_future(_read_status_until_closed(reader, limit_s))
    try:
        if kind in ("slow-body", "short-body"):
            writer.write(head + b"\x89PNG\r\n\x1a\n\0\0")
        drip = head if kind == "slow-head" else b"\0" * 100000 if kind == "slow-body" else b""
        for byte in drip:
            if status_task.done():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(interval_s)
        status = await status_task
    except OSError:
        status = await status_task
    finally:
        writer.close()
    return Closed(kind, status, time.monotonic() - started)


async def hold_slow_sockets(host: str, port: int, count: int, stop: asyncio.Event, interval_s: float = 1.0) -> int:
    """Keep `count` slow-head connections open until `stop` is set, opening a new one whenever the server closes
    one; returns how many the server closed."""
    closed = 0

    async def keeper() -> None:
        nonlocal closed
        while not stop.is_set():
            outcome = asyncio.ensure_future(slow_request(host, port, "slow-head", interval_s=interval_s))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({outcome, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if outcome.done():
                closed += 1
                if outcome.result().status is None:
                    await asyncio.sleep(0.1)  # the server refused the connection: do not spin
            else:
                outcome.cancel()
            stopped.cancel()

    await asyncio.gather(*(keeper() for _ in range(count)))
    return closed


def noise_png(target_bytes: int, seed: int = 1) -> bytes:
    """An RGB PNG of random pixels just under `target_bytes`: the costliest upload a byte limit admits."""
    side = int((target_bytes / 3.02) ** 0.5)
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def sixteen_bit_png(side: int = 7000) -> bytes:
    """A mostly flat 16-bit grey PNG: about 100 kB on the wire, `side` x `side` pixels when decoded."""
    pixels = np.zeros((side, side), np.uint16)
    pixels[::7, ::5] = 40000
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def raw_request(host: str, port: int, path: str, data: bytes, content_type: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data
