"""Running the app: uvicorn with the protocol guard, and the drain on SIGTERM.

One process, one event loop, one copy of each model. The first SIGTERM (or Ctrl-C) starts a drain: /readyz
answers 503 and new requests are refused with 503 while the server keeps listening, requests already in flight
(uploading, queued or running) finish, then uvicorn stops and the process exits 0. The drain lasts at most
``shutdown_grace_s``; a second signal stops at once. The gRPC listener (``grpc_port``) shares the loop and the
drain: at the signal its health service turns NOT_SERVING and new calls get UNAVAILABLE, its calls in flight
finish, and it closes with HTTP.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import resource
import signal
import socket
import threading
import time
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from service.config import Settings
from service.grpc.server import GrpcFrontEnd, GrpcStartError
from service.http_protocol import LINGER_S, ReceiptLimits, guarded_protocol
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics
from service.model_server import ModelServer

if TYPE_CHECKING:
    from service.tls import ServerTls

logger = logging.getLogger("service")

_GRACEFUL_CONNECTION_CLOSE_S = 5
MAX_HEAD_BYTES = 32 * 1024
"""Largest request head (request line and headers) accepted; nginx's default buffers hold 4 x 8 KiB."""


def http_protocol_class(settings: Settings, metrics: ServiceMetrics) -> type[asyncio.Protocol]:
    limits = ReceiptLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_connections=settings.max_connections,
        max_head_bytes=MAX_HEAD_BYTES,
        max_body_bytes=settings.max_upload_bytes,
        tls_handshake_timeout_s=settings.tls_handshake_timeout_s if settings.tls_files is not None else None,
    )
    return guarded_protocol(_http_parser(settings.http), limits, metrics)


def _http_parser(choice: str) -> type[asyncio.Protocol]:
    if choice in ("auto", "httptools"):
        try:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        except ImportError:
            if choice == "httptools":
                raise
        else:
            return HttpToolsProtocol
    from uvicorn.protocols.http.h11_impl import H11Protocol  # pure Python: imported (8 ms) only when it serves

    return H11Protocol


def _event_loop(choice: str) -> str:
    if choice == "auto":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            return "asyncio"
        return "uvloop"
    return choice


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT drains in-flight work before stopping, then exits cleanly.

    With `grpc`, the gRPC front end runs in the same event loop: it starts once HTTP listens (the models are
    loaded by then), refuses new calls from the signal on while its calls in flight finish (they count in the
    lifecycle's requests in flight, which the drain waits for), and is closed before the lifespan closes the
    batchers."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        lifecycle: Lifecycle,
        grace_s: float,
        grpc: GrpcFrontEnd | None = None,
        retire_patience_s: float | None = None,
        tls: ServerTls | None = None,
        tls_handshake_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(config)
        self._tls = tls
        self._tls_handshake_timeout_s = tls_handshake_timeout_s
        self._lifecycle = lifecycle
        self._grace_s = grace_s
        self._retire_patience_s = (
            retire_patience_s if retire_patience_s is not None else config.timeout_keep_alive + grace_s
        )
        self._grpc = grpc
        self.startup_failed = False
        """True when HTTP started but the gRPC listener could not (the server then stops at once)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_requested = False
        self._drain_task: asyncio.Task[None] | None = None
        self._retiring: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._loop.add_signal_handler(RETIRE_SIGNAL, self._retire)
        await super().serve(sockets)

    def _retire(self) -> None:
        """Leave a pool of workers that keep serving (service.workers): stop accepting connections at once, so that
        new ones go to the others; answer whatever arrives on the connections already open, each answer closing
        its connection (idle ones close at the keep-alive timeout); stop when none is left. Unlike the drain there
        is no 503 phase and no connection is cut: nobody needs to see this worker go."""
        if self._drain_requested:
            return
        self._drain_requested = True
        logger.info(
            "retiring: no new connections; %d open connection(s) close after their next answer",
            len(self.server_state.connections),
        )
        for listener in getattr(self, "servers", []):
            listener.close()
        self._lifecycle.retiring = True
        loop = asyncio.get_running_loop()
        if self._grpc is not None:
            self._retiring = loop.create_task(self._grpc.retire(self._grace_s))
        self._drain_task = loop.create_task(self._retired())

    async def _retired(self) -> None:
        give_up = time.monotonic() + self._retire_patience_s
        # uvicorn keeps its connections in a plain set that says nothing when it empties: look now and then.
        while self.server_state.connections and time.monotonic() < give_up:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self._retiring is not None:
            await self._retiring
        logger.info("retired: no connection left; stopping")
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self._tls is None:
            await super().startup(sockets)
        else:
            await self._startup_tls(sockets)
        if self.should_exit or self._grpc is None:
            return
        try:
            await self._grpc.start()
        except GrpcStartError as exc:
            logger.error("cannot start: %s", exc)
            self.startup_failed = True
            self.should_exit = True

    async def _startup_tls(self, sockets: list[socket.socket] | None) -> None:
        """uvicorn's start-up with TLS, but with a handshake deadline, which uvicorn does not pass to the loop (its
        listeners are made with the loop's default, 60 s): what uvicorn's `startup` does for sockets or a host and
        port, the only ways this server listens."""
        assert self._tls is not None
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            self.should_exit = True
            return
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=_loop
            )

        loop = asyncio.get_running_loop()
        listen = partial(
            loop.create_server,
            create_protocol,
            ssl=self._tls.http_context,
            ssl_handshake_timeout=self._tls_handshake_timeout_s,
            # After close_notify, what a client still sends is read and discarded this long at most (the loop's
            # default is 30 s): the lingering close of plain HTTP, which TLS, having no half-close, does itself.
            ssl_shutdown_timeout=LINGER_S,
            backlog=config.backlog,
        )
        try:
            if sockets is not None:
                self.servers = [await listen(sock=sock) for sock in sockets]
            else:
                self.servers = [await listen(host=config.host, port=config.port)]
        except OSError as exc:
            logger.error("cannot listen on %s:%d: %s", config.host, config.port, exc)
            await self.lifespan.shutdown()
            self.should_exit = True
            return
        if sockets is None:
            port = self.servers[0].sockets[0].getsockname()[1]
            host = f"[{config.host}]" if ":" in config.host else config.host
            logger.info("resnet-serve running on https://%s:%d (TLS%s)", host, port, self._tls_description())
        self.started = True

    def _tls_description(self) -> str:
        assert self._tls is not None
        return ", client certificates required" if self._tls.client_certificates_required else ""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._grpc is not None:
            await self._grpc.stop()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_requested or self._loop is None:
            # A second signal: uvicorn's own behaviour (stop now; a further Ctrl-C forces the exit).
            super().handle_exit(sig, frame)
            return
        self._drain_requested = True
        # A signal handler may interrupt the loop anywhere; hand the work to the loop instead of doing it here.
        self._loop.call_soon_threadsafe(self._begin_drain, signal.Signals(sig).name)

    def _begin_drain(self, signal_name: str) -> None:
        logger.info(
            "%s received: draining (readiness 503, new requests refused); %d request(s) in flight, grace %g s",
            signal_name,
            self._lifecycle.in_flight,
            self._grace_s,
        )
        self._lifecycle.begin_drain()
        if self._grpc is not None:
            self._grpc.begin_drain()
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        if await self._lifecycle.wait_idle(self._grace_s):
            logger.info("drained: no request in flight; stopping")
        else:
            logger.warning(
                "grace period of %g s is over with %d request(s) still in flight; stopping anyway",
                self._grace_s,
                self._lifecycle.in_flight,
            )
        self.should_exit = True


RETIRE_SIGNAL = signal.SIGUSR1
"""What the worker supervisor sends a worker it replaces by others (service.workers)."""
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
"""Allocations from this size up get their own mapping, returned to the OS as soon as they are freed."""


def return_freed_memory_to_the_os() -> bool:
    """Fix glibc's mmap threshold (what MALLOC_MMAP_THRESHOLD_ does, set from inside the process).

    glibc raises the threshold after each large free, up to 32 MiB, so that the buffers of the next uploads and
    decodes come from heap arenas, which are seldom given back: after 32 concurrent 32 MiB uploads RSS stayed
    about 110 MB above idle. Fixed, it also stops adjusting. At 128 KiB, RSS returned to within 5 MB of idle, but
    every buffer of an ordinary request was a fresh mapping that the kernel faulted in page by page and unmapped
    again: 147 page faults for each 600 kB buffer (tests/unit/test_server_memory.py counts them), and a ResNet-50
    request of a 500x375 JPEG has about a dozen of 150-600 kB (the decoded image, its resized and cropped copies, the
    tensor). At 4 MiB those buffers (up to a 12-megapixel JPEG's draft decode, 2.3 MB) are reused from
    the heap: under one fault per request; an upload or image of 4 MiB and more, which the memory limits are about,
    is still mapped and given back (32 uploads at the limit: +14 MB after, in docs/RELIABILITY.md). Not glibc
    (musl): nothing to do. An operator's own MALLOC_MMAP_THRESHOLD_ wins."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return True
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError, TypeError):
        return False


def _check_file_limit(settings: Settings) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < settings.max_connections + 64:
        logger.warning(
            "the file-descriptor limit (%d) leaves little room above max_connections (%d); raise it "
            "(ulimit -n) or lower --max-connections",
            soft,
            settings.max_connections,
        )


def serve(
    server: ModelServer, sockets: list[socket.socket] | None = None, *, warm_before_serving: bool = False
) -> bool:
    """Serve HTTP, and gRPC when its port is set, until stopped (on `sockets` when a worker supervisor bound them);
    False if start-up failed."""
    settings = server.settings
    app = server.http_app(warm_before_serving=warm_before_serving)
    _check_file_limit(settings)
    if not return_freed_memory_to_the_os():
        logger.info("not glibc: the allocator's thresholds are left as they are")
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=http_protocol_class(settings, server.metrics),
        log_config=None,  # service.logs configured every logger, uvicorn's included
        log_level=settings.log_level,
        access_log=False,  # the serving gate writes the access lines (service.logs)
        lifespan="on",
        loop=_event_loop(settings.loop),
        # uvicorn annotates whole seconds, but only ever hands the value to loop.call_later, which takes a float.
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=_GRACEFUL_CONNECTION_CLOSE_S,
    )
    # Worker processes (given the supervisor's sockets) share the gRPC port too, each with its own listener.
    grpc = server.grpc_front_end(share_port=sockets is not None) if settings.grpc_port else None
    # A retiring worker waits as long as any connection it holds may legitimately take (a head, a slow upload
    # and its answer, within their deadlines, then the keep-alive): cut sooner, an honest client got a 500.
    retire_patience_s = (
        settings.header_timeout_s + settings.body_timeout_s + settings.request_timeout_s + settings.keep_alive_timeout_s
    )
    listener = DrainingServer(
        config,
        lifecycle=server.lifecycle,
        grace_s=settings.shutdown_grace_s,
        grpc=grpc,
        retire_patience_s=retire_patience_s,
        tls=server.tls,
        tls_handshake_timeout_s=settings.tls_handshake_timeout_s,
    )
    listener.run(sockets=sockets)
    return listener.started and not listener.startup_failed
