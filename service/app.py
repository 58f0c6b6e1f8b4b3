"""The app factory and its lifespan: load every model, warm them up, start and finally close their batchers.

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
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI

from service import repository
from service.api import classify, health, metrics as metrics_api, models as models_api
from service.api.errors import install_error_handlers
from service.api.middleware import ServingGateMiddleware
from service.batching import DynamicBatcher
from service.config import Settings
from service.dataplane import DataPlane, ModelState, ServedModel
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics
from service.modelspec import ModelSpec, ModelSpecError
from service.preprocess import DecodeOptions
from service.runtime import OnnxModelRuntime, available_cpus

logger = logging.getLogger("service")

RuntimeFactory = Callable[[Path, Settings], Any]
"""Opens one model file; returns an `OnnxModelRuntime` or an object with the same methods."""


class StartupError(RuntimeError):
    """The model repository cannot be served; the message says what to fix."""


def open_onnx_runtime(path: Path, settings: Settings) -> OnnxModelRuntime:
    return OnnxModelRuntime(path, providers=settings.providers, intra_op_threads=settings.intra_op_threads)


def _batch_runner(runtime: Any, spec: ModelSpec) -> Callable[[list[np.ndarray]], np.ndarray]:
    def run_batch(tensors: list[np.ndarray]) -> np.ndarray:
        logits = runtime.run(np.stack(tensors), spec.output_name)
        if logits.shape != (len(tensors), spec.num_classes):
            raise ValueError(f"model returned logits of shape {logits.shape}, expected ({len(tensors)}, {spec.num_classes})")
        return logits

    return run_batch


def _load_models(settings: Settings, open_runtime: RuntimeFactory, metrics: ServiceMetrics) -> dict[str, ServedModel]:
    """Open every model in the repository and check its spec against its graph; raises StartupError."""
    served: dict[str, ServedModel] = {}
    for model_file in repository.discover(settings.model_dir):
        try:
            runtime = open_runtime(model_file.path, settings)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise StartupError(f"{model_file.path.name}: ONNX Runtime cannot load the model: {exc}") from None
        spec = repository.read_spec(model_file, runtime)
        try:
            runtime.check_compatible(spec)
        except ValueError as exc:
            raise StartupError(f"{model_file.path.name}: the graph does not match its metadata: {exc}") from None
        max_batch_size = settings.max_batch_size if runtime.supports_batches() else 1
        batcher: DynamicBatcher[np.ndarray, np.ndarray] = DynamicBatcher(
            _batch_runner(runtime, spec),
            name=model_file.name,
            max_batch_size=max_batch_size,
            max_queue_size=settings.max_queue_size,
            max_delay_s=settings.max_batch_delay_s,
            max_wait_s=settings.max_queue_wait_s,
            observer=metrics.register_model(model_file.name),
        )
        metrics.watch_queue_depth(model_file.name, lambda batcher=batcher: batcher.queue_depth)
        model = ServedModel(model_file.name, model_file.path, spec, runtime, batcher)
        served[model.name] = model
        logger.info(
            "loaded model %s from %s: %d classes, %s %dx%d input, provider %s, %d intra-op threads",
            model.name, model_file.path, spec.num_classes, spec.color_mode, spec.crop_size, spec.crop_size,
            runtime.provider, runtime.intra_op_threads,
        )
    return served


async def _warm_up_and_start(models: list[ServedModel], lifecycle: Lifecycle, metrics: ServiceMetrics) -> None:
    for model in models:
        model.state = ModelState.WARMING_UP
        spec = model.spec
        sizes = range(1, model.batcher.max_batch_size + 1)
        try:
            await asyncio.to_thread(
                model.runtime.warm_up, sizes, (spec.channels, spec.crop_size, spec.crop_size), spec.output_name
            )
        except Exception as exc:
            model.state = ModelState.FAILED
            model.error = f"warm-up failed: {exc}"
            logger.exception("warm-up of model %s failed; the server stays not ready", model.name)
            continue
        model.batcher.start()
        model.state = ModelState.READY
        metrics.model_ready.labels(model.name).set(1)
        logger.info("model %s warmed up (batch sizes 1 to %d) and ready", model.name, model.batcher.max_batch_size)
    if all(model.state is ModelState.READY for model in models):
        lifecycle.mark_ready()
        logger.info("all %d model(s) ready", len(models))


def create_app(settings: Settings | None = None, *, open_runtime: RuntimeFactory | None = None) -> FastAPI:
    """A new app serving `settings.model_dir`; `open_runtime` replaces how model files are opened (tests)."""
    settings = settings if settings is not None else Settings()
    opener = open_runtime or open_onnx_runtime
    metrics = ServiceMetrics()
    lifecycle = Lifecycle()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            served = await asyncio.to_thread(_load_models, settings, opener, metrics)
            default_model = repository.choose_default_model(list(served), settings.default_model)
        except (StartupError, repository.RepositoryError, ModelSpecError) as exc:
            logger.error("cannot start: %s", exc)
            raise StartupError(str(exc)) from None
        decode_pool = ThreadPoolExecutor(
            max_workers=settings.decode_threads or available_cpus(), thread_name_prefix="decode"
        )
        app.state.dataplane = DataPlane(
            served,
            default_model=default_model,
            lifecycle=lifecycle,
            metrics=metrics,
            decode_executor=decode_pool,
            decode_options=DecodeOptions(max_image_pixels=settings.max_image_pixels, jpeg_draft=settings.jpeg_draft),
            request_timeout_s=settings.request_timeout_s,
            max_files_per_request=settings.max_files_per_request,
        )
        warm_up = asyncio.create_task(_warm_up_and_start(list(served.values()), lifecycle, metrics), name="warm-up")
        try:
            yield
        finally:
            lifecycle.begin_drain()
            warm_up.cancel()
            await asyncio.gather(warm_up, return_exceptions=True)
            for model in served.values():
                await model.batcher.close()
                metrics.model_ready.labels(model.name).set(0)
            lifecycle.mark_stopped()
            decode_pool.shutdown(wait=False, cancel_futures=True)
            logger.info("models unloaded")

    app = FastAPI(
        title="resnet-serve",
        summary="Image classification with ONNX ResNets and dynamic batching.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.lifecycle = lifecycle
    app.add_middleware(ServingGateMiddleware, lifecycle=lifecycle, metrics=metrics)
    install_error_handlers(app, metrics)
    app.include_router(classify.router)
    app.include_router(models_api.router)
    app.include_router(health.router)
    app.include_router(metrics_api.router)
    return app
