"""The app factory: wiring only. The registry owns the models, the data plane the request path, the routers HTTP.

Nothing is built at import time; `create_app(settings)` makes an independent app (own metrics registry, own
thread pools), so several can live in one process.

Start-up order: the lifespan loads each model (ONNX Runtime session + spec, validated against each other) before
the server accepts connections, so a bad model fails start-up with a message naming the problem. Warm-up then
runs in the background while the server already answers /healthz (200) and /readyz (503); when every model is
warmed up and its batcher runs, /readyz turns 200.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__
from service.api import classify, health, metrics as metrics_api, models as models_api, page, v2
from service.api.errors import install_error_handlers
from service.api.middleware import ServingGateMiddleware
from service.auth import ApiKeys, ApiKeysError
from service.config import Settings
from service.dataplane import DataPlane
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics
from service.priority import thread_initializer
from service.registry import ModelRegistry, RuntimeFactory, StartupError
from service.runtime import available_cpus

logger = logging.getLogger("service")


ReadyHook = Callable[[dict[str, float]], None]
"""Told each model's inference seconds per image at batch 1 once every model is ready (the worker supervisor)."""


async def _warm_up(registry: ModelRegistry, lifecycle: Lifecycle, on_ready: ReadyHook | None) -> None:
    if await registry.warm_up_and_start():
        lifecycle.mark_ready()
        logger.info("all %d model(s) ready", len(registry.models))
        if on_ready is not None:
            on_ready(await registry.batch1_seconds_per_image())


def create_app(settings: Settings | None = None, *, open_runtime: RuntimeFactory | None = None,
               on_ready: ReadyHook | None = None, warm_before_serving: bool = False) -> FastAPI:
    """A new app serving `settings.model_dir`.

    `open_runtime` replaces how model files are opened (tests). With `warm_before_serving` the app takes no
    connection before its models are warm (a worker joining others that already serve)."""
    settings = settings if settings is not None else Settings()
    try:
        api_keys = ApiKeys(settings.api_keys_file,
                           settings.api_keys.get_secret_value() if settings.api_keys is not None else None)
    except ApiKeysError as exc:
        raise StartupError(str(exc)) from None
    metrics = ServiceMetrics()
    lifecycle = Lifecycle()
    registry = ModelRegistry(settings, metrics, open_runtime)
    dataplane = DataPlane(
        registry,
        lifecycle=lifecycle,
        metrics=metrics,
        decode_threads=settings.decode_threads or available_cpus(),
        decode_thread_initializer=thread_initializer(settings.worker_nice),
        request_timeout_s=settings.request_timeout_s,
        max_files_per_request=settings.max_files_per_request,
        max_upload_bytes=settings.max_upload_bytes,
        max_inflight_bytes=settings.max_inflight_bytes,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await asyncio.to_thread(registry.load)
        except StartupError as exc:
            logger.error("cannot start: %s", exc)
            raise
        warm_up = asyncio.create_task(_warm_up(registry, lifecycle, on_ready), name="warm-up")
        if warm_before_serving:
            await asyncio.shield(warm_up)
        try:
            yield
        finally:
            lifecycle.begin_drain()
            warm_up.cancel()
            await asyncio.gather(warm_up, return_exceptions=True)
            await registry.close()
            lifecycle.mark_stopped()
            dataplane.close()
            logger.info("models unloaded")

    app = FastAPI(
        title="resnet-serve",
        summary="Image classification with ONNX ResNets and dynamic batching.",
        version=__version__,
        lifespan=lifespan,
        # /docs is served by `page` from packaged Swagger UI files (FastAPI's loads them from a CDN); no /redoc.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.lifecycle = lifecycle
    app.state.dataplane = dataplane
    app.add_middleware(
        ServingGateMiddleware, lifecycle=lifecycle, metrics=metrics, api_keys=api_keys,
        metrics_require_key=settings.metrics_require_key, access_log=settings.access_log,
    )
    install_error_handlers(app, metrics)
    app.include_router(classify.router)
    app.include_router(models_api.router)
    app.include_router(health.router)
    app.include_router(metrics_api.router)
    app.include_router(v2.router)
    app.include_router(page.build_router(openapi_url=app.openapi_url, title=app.title,
                                         swagger_ui_parameters=app.swagger_ui_parameters))
    return app
