"""The server object: it builds the parts, registry -> data plane -> HTTP app and gRPC front end, and hands each
front end the data plane. Neither front end reaches into the other, nor into the registry.

`running()` is the models' life: load them (a bad model fails start-up with a message naming the problem), warm
them up in the background while the front ends already answer probes, and on the way out drain and close them.
The HTTP app's lifespan runs it, since uvicorn drives both listeners' start and stop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from service import tracing
from service.auth import ApiKeys, ApiKeysError
from service.config import Settings
from service.dataplane import DataPlane
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics, worker_shared_folder
from service.model_control import ModelControl
from service.priority import thread_initializer
from service.ratelimit import KeyRateLimits
from service.registry import ModelRegistry, RuntimeFactory, StartupError
from service.runtime import available_cpus

if TYPE_CHECKING:
    from fastapi import FastAPI

    from service.grpc.server import GrpcFrontEnd
    from service.tls import ServerTls

logger = logging.getLogger("service")

ReadyHook = Callable[[dict[str, float]], None]
"""Told each model's inference seconds per image at batch 1 once every model is ready (the worker supervisor)."""


class ModelServer:
    """One server process's parts. Nothing starts until `running()` is entered (by the HTTP app's lifespan)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        open_runtime: RuntimeFactory | None = None,
        on_ready: ReadyHook | None = None,
    ) -> None:
        """`open_runtime` replaces how model files are opened (tests); raises StartupError for unreadable keys."""
        self.settings = settings = settings if settings is not None else Settings()
        try:
            self.api_keys = ApiKeys(
                settings.api_keys_file, settings.api_keys.get_secret_value() if settings.api_keys is not None else None
            )
        except ApiKeysError as exc:
            raise StartupError(str(exc)) from None
        self.tls: ServerTls | None = None
        """Both listeners' TLS material when TLS is on."""
        if settings.tls_files is not None:
            from service.tls import ServerTls, TlsError

            try:
                self.tls = ServerTls(settings.tls_files)
            except TlsError as exc:
                raise StartupError(f"TLS: {exc}") from None
        self._owns_tracing = False
        if settings.tracing and not tracing.enabled():  # (a test may have set up its own exporter)
            try:
                tracing.configure()
            except tracing.TracingUnavailable as exc:
                raise StartupError(str(exc)) from None
            self._owns_tracing = True
        self.rate_limits = KeyRateLimits(worker_shared_folder())
        """Per-key request rates, shared by every worker process; nothing is made until a key with a rate is used."""
        self.metrics = ServiceMetrics()
        # Across worker processes readiness is the minimum over the workers: one that takes no connections yet has
        # no say (`running()` publishes it).
        self.metrics.withhold_readiness()
        self.lifecycle = Lifecycle(worker_shared_folder())
        self.registry = ModelRegistry(settings, self.metrics, open_runtime)
        self.control = ModelControl(self.registry, settings, api_keys_enabled=lambda: self.api_keys.enabled)
        self.dataplane = DataPlane(
            self.registry,
            lifecycle=self.lifecycle,
            metrics=self.metrics,
            limits=settings,
            control=self.control,
            decode_threads=settings.decode_threads or available_cpus(),
            decode_thread_initializer=thread_initializer(settings.worker_nice),
        )
        self._on_ready = on_ready
        self._loading: Future[None] | None = None

    def begin_loading(self) -> Future[None]:
        """Start opening the model files, in a thread, before the front ends are imported and built: creating an
        ONNX Runtime session releases the GIL, so on two cores it overlaps with importing the web stack (ResNet-50,
        workers auto: ready after 1.54 s against 1.81 s). `running()` waits for it, and starts it if nobody did."""
        if self._loading is None:
            loader = ThreadPoolExecutor(1, thread_name_prefix="model-load")
            self._loading = loader.submit(self.registry.load)
            loader.shutdown(wait=False)
        return self._loading

    def http_app(self, *, warm_before_serving: bool = False) -> FastAPI:
        """The HTTP front end; its lifespan runs the models (`running`). With `warm_before_serving` it takes no
        connection before they are warm (a worker joining others that already serve)."""
        from service.app import build_http_app  # the web stack, only for a server that serves HTTP

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            async with self.running(warm_before_serving=warm_before_serving):
                yield

        return build_http_app(
            self.dataplane,
            lifecycle=self.lifecycle,
            metrics=self.metrics,
            api_keys=self.api_keys,
            rate_limits=self.rate_limits,
            settings=self.settings,
            lifespan=lifespan,
        )

    def grpc_front_end(self, *, address: str | None = None, share_port: bool = False) -> GrpcFrontEnd:
        """The V2 gRPC front end on the same data plane, admitted by the same keys."""
        from service.grpc.server import GrpcFrontEnd

        return GrpcFrontEnd(
            self.dataplane,
            lifecycle=self.lifecycle,
            metrics=self.metrics,
            settings=self.settings,
            address=address,
            share_port=share_port,
            api_keys=self.api_keys,
            rate_limits=self.rate_limits,
            tls=self.tls,
        )

    @asynccontextmanager
    async def running(self, *, warm_before_serving: bool = False) -> AsyncIterator[None]:
        registry = self.registry
        try:
            await asyncio.wrap_future(self.begin_loading())
        except StartupError as exc:
            logger.error("cannot start: %s", exc)
            raise
        warm_up = asyncio.create_task(self._warm_up(), name="warm-up")
        if warm_before_serving:
            await asyncio.shield(warm_up)
        self.metrics.publish_readiness()  # connections are taken from here on
        try:
            yield
        finally:
            if self.lifecycle.retiring:
                self.metrics.withhold_readiness()
            self.lifecycle.begin_drain()
            warm_up.cancel()
            await asyncio.gather(warm_up, return_exceptions=True)
            await self.control.stop()
            await registry.close()
            self.lifecycle.mark_stopped()
            self.dataplane.close()
            if self._owns_tracing:
                tracing.shutdown()  # sends the spans still waiting
            logger.info("models unloaded")

    async def _warm_up(self) -> None:
        ready = False
        try:
            ready = await self.registry.warm_up_and_start()
            if ready:
                # A worker that starts after explicit loads and unloads makes them before it is ready.
                await self.control.start()
                # What start-up made (the web stack, schemas, sessions) lives as long as the process: out of the
                # collector's sight, a full collection no longer walks it, which stalled the event loop for tens of
                # milliseconds whenever one ran under traffic (a model load made one run).
                gc.freeze()
        finally:
            # A serving process starts with the collector off (service.__main__, service.workers.worker_main): start-up
            # makes about 140,000 objects that all live on (modules, classes, schemas), and the collections their
            # allocation sets off walk them over and over to free under 700: 6% of the imports, 30 ms of a cold start
            # here. Python's documentation gives the pattern for forked workers (gc.disable early, gc.freeze, then
            # gc.enable). On from here, ready or not.
            gc.enable()
        if ready:
            self.lifecycle.mark_ready()
            logger.info("all %d model(s) ready", len(self.registry.models))
            if self._on_ready is not None:
                self._on_ready(await self.registry.batch1_seconds_per_image())
