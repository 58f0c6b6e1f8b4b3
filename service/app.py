"""The HTTP front end: `build_http_app` wires the routers, the serving gate and the error handlers around a data
plane; `create_app(settings)` is the factory (`uvicorn --factory service.app:create_app`, and the tests), which
builds a whole `ModelServer` and returns its HTTP app.

Nothing is built at import time; every app is independent (own metrics registry, own thread pools), so several can
live in one process. Start-up order: the lifespan loads each model before the server accepts connections, so a bad
model fails start-up with a message naming the problem. Warm-up then runs in the background while the server
already answers /healthz (200) and /readyz (503); when every model is warmed up and its batcher runs, /readyz turns
200.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from service import __version__
from service.api import classify, health, page, repository, v2
from service.api import metrics as metrics_api
from service.api import models as models_api
from service.api.errors import install_error_handlers
from service.api.hot_paths import HotPaths
from service.api.middleware import ServingGateMiddleware
from service.auth import ApiKeys
from service.config import Settings
from service.dataplane import DataPlane
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics
from service.model_server import ModelServer, ReadyHook
from service.ratelimit import KeyRateLimits
from service.registry import RuntimeFactory

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
CORS_REQUEST_HEADERS = [
    "Authorization",
    "X-API-Key",
    "Content-Type",
    "Content-Encoding",
    "Inference-Header-Content-Length",
    "X-Request-ID",
]
"""Headers a page on another origin may send (beyond the CORS-safelisted ones): keys, V2 bodies, request IDs."""
CORS_EXPOSED_HEADERS = ["Inference-Header-Content-Length", "Retry-After", "X-Request-ID"]
"""Response headers such a page may read: a V2 binary answer's JSON length, when to retry, the request's ID."""


def create_app(
    settings: Settings | None = None,
    *,
    open_runtime: RuntimeFactory | None = None,
    on_ready: ReadyHook | None = None,
    warm_before_serving: bool = False,
) -> FastAPI:
    """A new server's HTTP app, serving `settings.model_dir` (see `ModelServer`)."""
    return ModelServer(settings, open_runtime=open_runtime, on_ready=on_ready).http_app(
        warm_before_serving=warm_before_serving
    )


def build_http_app(
    dataplane: DataPlane,
    *,
    lifecycle: Lifecycle,
    metrics: ServiceMetrics,
    api_keys: ApiKeys,
    settings: Settings,
    lifespan: Lifespan,
    rate_limits: KeyRateLimits | None = None,
) -> FastAPI:
    app = FastAPI(
        title="resnet-serve",
        summary="Image classification with ONNX ResNets and dynamic batching.",
        version=__version__,
        lifespan=lifespan,
        # /docs is served by `page` from packaged Swagger UI files (FastAPI's loads them from a CDN); no /redoc.
        docs_url=None,
        redoc_url=None,
    )
    # What the routers' dependencies read (`api.deps`): the data plane, the metrics and the limits, nothing else.
    app.state.dataplane = dataplane
    app.state.metrics = metrics
    app.state.limits = settings
    # Added first, so within the gate: the inference routes skip FastAPI's routing stack (measured there).
    app.add_middleware(HotPaths, dataplane=dataplane, metrics=metrics, limits=settings)
    app.add_middleware(
        ServingGateMiddleware,
        lifecycle=lifecycle,
        metrics=metrics,
        api_keys=api_keys,
        rate_limits=rate_limits,
        metrics_require_key=settings.metrics_require_key,
        access_log=settings.access_log,
    )
    if settings.cors_origins:
        # Added last, so outermost: preflights are answered before the gate asks for a key, and every answer the
        # gate or the app writes (401, 429, 503 included) carries the CORS headers a browser needs to read it.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=600,
        )
    install_error_handlers(app, metrics)
    app.include_router(classify.router)
    app.include_router(models_api.router)
    app.include_router(health.router)
    app.include_router(metrics_api.router)
    app.include_router(v2.router)
    app.include_router(repository.router)
    app.include_router(
        page.build_router(openapi_url=app.openapi_url, title=app.title, swagger_ui_parameters=app.swagger_ui_parameters)
    )
    build_routes_now(app)
    return app


def build_routes_now(app: FastAPI) -> None:
    """Build every route's validators now, not on the first request that reaches its router: FastAPI builds them
    lazily, which held the event loop for 30-50 ms on this machine, a stall every request in flight then waited out
    (seen as the p99 of a model swap: its first repository call). Matching a path no route has visits them all."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/-/build-routes",
        "root_path": "",
        "headers": [],
        "query_string": b"",
    }
    for route in app.router.routes:
        route.matches(dict(scope))
