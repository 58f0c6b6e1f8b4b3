"""The one home of every served model: open, check, batch, warm up, describe and close it.

A `ServedModel` is the model contract the data plane drives (`preprocess`, `run_batch`, `postprocess`), bound to
its own spec, session and serving settings. Its state changes here and nowhere else: loaded -> warming_up ->
ready, or failed. `ModelRegistry` loads a model repository into served models before the server listens (a bad
model fails start-up with a message naming the file and the problem) and warms them up in the background.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from service import repository
from service.autotune import BatchCurve, largest_batch
from service.batching import DynamicBatcher, ImageReservation
from service.config import ServingSettings, Settings
from service.contract import ModelDescription, ModelState
from service.decode_memory import DecodeMemory
from service.errors import ModelNotFound
from service.metrics import ServiceMetrics
from service.modelspec import AUTO, ModelSpec, ModelSpecError
from service.postprocess import ScoredLabel, rank
from service.preprocess import DecodeOptions, ImageUpload, PreprocessedImage, preprocess_upload
from service.priority import call_in_lowered_thread, thread_initializer
from service.runtime import InferenceRuntime, OnnxModelRuntime, available_cpus, run_batch

logger = logging.getLogger("service")

RuntimeFactory = Callable[[Path, Sequence[str], int | None], InferenceRuntime]
"""Opens one model file with (path, providers, intra-op threads or None for all CPUs)."""


class StartupError(RuntimeError):
    """The model repository cannot be served; the message says what to fix."""


def open_onnx_runtime(path: Path, providers: Sequence[str], intra_op_threads: int | None) -> OnnxModelRuntime:
    return OnnxModelRuntime(path, providers=providers, intra_op_threads=intra_op_threads)


@dataclass(eq=False)
class ServedModel:
    """A model as served. Its stages are bound at construction to its spec and session, so that a request goes
    from the data plane straight into preprocess.py, runtime.py and postprocess.py."""

    name: str
    path: Path
    spec: ModelSpec
    serving: ServingSettings
    overridden: tuple[str, ...]
    runtime: InferenceRuntime
    decode_options: DecodeOptions
    metrics: ServiceMetrics
    worker_nice: int = 0
    """How much lower than the event loop the threads running this model's batches are (service.priority)."""
    version: str = "1"
    is_default: bool = False
    """Whether requests that name no model go to this one (the registry decides)."""
    state: ModelState = field(default=ModelState.LOADED, init=False)
    error: str | None = field(default=None, init=False)
    preprocess: Callable[[ImageUpload], PreprocessedImage] = field(init=False, repr=False)
    run_batch: Callable[[Sequence[np.ndarray]], np.ndarray] = field(init=False, repr=False)
    postprocess: Callable[[np.ndarray, int], list[list[ScoredLabel]]] = field(init=False, repr=False)
    batcher: DynamicBatcher[np.ndarray, np.ndarray] = field(init=False, repr=False)
    batch_curve: BatchCurve | None = field(default=None, init=False)
    """What the warm-up measured when the batch size is "auto"."""

    @property
    def auto_batch(self) -> bool:
        return self.serving.max_batch_size == AUTO and self.runtime.supports_batches()

    def __post_init__(self) -> None:
        self.preprocess = partial(preprocess_upload, spec=self.spec, options=self.decode_options)
        self.run_batch = partial(run_batch, runtime=self.runtime, spec=self.spec)
        self.postprocess = partial(rank, labels=self.spec.labels)
        serving = self.serving
        self.batcher = DynamicBatcher(
            self.run_batch,
            name=self.name,
            max_batch_size=serving.max_batch_size
            if isinstance(serving.max_batch_size, int) and self.runtime.supports_batches()
            else 1,
            max_queue_size=serving.max_queue_size,
            max_delay_s=serving.max_batch_delay_s,
            max_wait_s=serving.max_queue_wait_s,
            observer=self.metrics.register_model(self.name, self.version),
            thread_initializer=thread_initializer(self.worker_nice),
        )

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY and self.batcher.running

    def reserve(self, count: int) -> ImageReservation[np.ndarray, np.ndarray]:
        return self.batcher.reserve(count)

    def describe(self) -> ModelDescription:
        return ModelDescription(
            name=self.name,
            version=self.version,
            versions=(self.version,),
            state=self.state,
            error=self.error,
            spec=self.spec,
            is_default=self.is_default,
            serving=ServingSettings(
                max_batch_size=self.batcher.max_batch_size,
                max_batch_delay_ms=self.serving.max_batch_delay_ms,
                max_queue_size=self.serving.max_queue_size,
                max_queue_wait_ms=self.serving.max_queue_wait_ms,
                intra_op_threads=self.runtime.intra_op_threads,
            ),
            overridden=self.overridden,
            execution_provider=self.runtime.provider,
            intra_op_threads=self.runtime.intra_op_threads,
            queue_depth=self.batcher.queue_depth,
            seconds_per_image=self.batcher.seconds_per_image,
            batch_size_source=self._batch_size_source(),
            batch_curve=self.batch_curve,
        )

    def _batch_size_source(self) -> str:
        if not self.runtime.supports_batches():
            return "fixed batch axis"
        if self.serving.max_batch_size == AUTO:
            return "auto" if self.batch_curve is not None else "auto (not measured yet)"
        return "model" if "max_batch_size" in self.overridden else "flag"

    def _set_state(self, state: ModelState, error: str | None = None) -> None:
        self.state = state
        self.error = error
        self.metrics.model_ready.labels(self.name).set(1 if state is ModelState.READY else 0)

    async def warm_up_and_start(self) -> bool:
        """Warm the model up (measuring its batch curve when the batch size is auto), then start the batcher;
        False (and state failed) if warm-up raised."""
        self._set_state(ModelState.WARMING_UP)
        spec = self.spec
        shape = (spec.channels, spec.crop_size, spec.crop_size)
        try:
            if self.auto_batch:
                limit = largest_batch(4 * spec.channels * spec.crop_size * spec.crop_size)
                curve = await asyncio.to_thread(self.runtime.measure_batches, limit, shape, spec.output_name)
                self.batch_curve = curve
                self.batcher.tune(curve.chosen, curve.seconds_per_image(curve.chosen))
                warmed = ", ".join(f"{t.batch_size}: {t.images_per_second:.1f}" for t in curve.timings)
                logger.info(
                    "model %s: images per second by batch size %s; batch size %d chosen",
                    self.name,
                    warmed,
                    curve.chosen,
                )
            else:
                sizes = warm_up_sizes(self.batcher.max_batch_size)
                await asyncio.to_thread(self.runtime.warm_up, sizes, shape, spec.output_name)
        except Exception as exc:
            logger.exception("warm-up of model %s failed; the server stays not ready", self.name)
            self._set_state(ModelState.FAILED, f"warm-up failed: {exc}")
            return False
        self.batcher.start()
        self._set_state(ModelState.READY)
        logger.info("model %s warmed up and ready (batch size up to %d)", self.name, self.batcher.max_batch_size)
        return True

    async def close(self) -> None:
        await self.batcher.close()
        self.metrics.model_ready.labels(self.name).set(0)


def warm_up_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes warmed up for a fixed maximum: powers of two and the maximum itself. Warming every size
    from 1 to 32 took 5.9 s on ResNet-50; the sizes in between plan their memory on their first batch instead."""
    sizes = [1]
    while sizes[-1] * 2 <= max_batch_size:
        sizes.append(sizes[-1] * 2)
    return sizes if sizes[-1] == max_batch_size else [*sizes, max_batch_size]


class ModelRegistry:
    """The served models by name, and which one answers requests that name none."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics, open_runtime: RuntimeFactory | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        self._open_runtime = open_runtime or open_onnx_runtime
        self._models: dict[str, ServedModel] = {}
        self.default_model: str | None = None
        self.decode_memory = DecodeMemory(settings.max_decode_bytes, metrics.decode_memory_bytes.set)
        """One budget for the decodes of every model."""

    @property
    def models(self) -> list[ServedModel]:
        return [self._models[name] for name in sorted(self._models)]

    @property
    def loaded(self) -> bool:
        return bool(self._models)

    @property
    def ready(self) -> bool:
        """Every model warmed up with its batcher running."""
        return self.loaded and all(model.ready for model in self._models.values())

    def get(self, name: str | None, version: str | None = None) -> ServedModel:
        """The named model (the default one for None) at `version` (None: the one that answers by default);
        ModelNotFound if there is no such model or version."""
        key = self.default_model if name is None else name
        model = self._models.get(key) if key is not None else None
        if model is None:
            served = ", ".join(sorted(self._models)) or "none yet (the server is starting)"
            raise ModelNotFound(f"no model named {key!r}; served models: {served}")
        if version is not None and version != model.version:
            raise ModelNotFound(
                f"model {model.name!r} has no version {version!r}; its only version is {model.version!r}"
            )
        return model

    def all(self) -> list[ServedModel]:
        """Every model version, sorted by name (and version)."""
        return self.models

    def load(self) -> None:
        """Open and check every model of the repository (blocking: run it in a thread); raises StartupError."""
        settings = self._settings
        try:
            files = repository.discover(settings.model_dir)
            models = [self._load_one(model_file) for model_file in files]
            self.default_model = repository.choose_default_model([m.name for m in models], settings.default_model)
        except (repository.RepositoryError, ModelSpecError, ValueError) as exc:
            raise StartupError(str(exc)) from None
        self._models = {model.name: model for model in models}
        for model in models:
            model.is_default = model.name == self.default_model

    def _open(self, model_file: repository.ModelFile, threads: int | None) -> InferenceRuntime:
        # ONNX Runtime creates the session's thread pool now, and its threads inherit this thread's priority.
        open_runtime = partial(self._open_runtime, model_file.path, self._settings.providers, threads)
        try:
            return call_in_lowered_thread(open_runtime, self._settings.worker_nice)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise StartupError(f"{model_file.path.name}: ONNX Runtime cannot load the model: {exc}") from None

    def _load_one(self, model_file: repository.ModelFile) -> ServedModel:
        settings = self._settings
        sidecar_threads = repository.sidecar_serving(model_file).intra_op_threads
        runtime = self._open(model_file, sidecar_threads or settings.intra_op_threads)
        metadata = repository.read_metadata(model_file, runtime)
        serving = settings.serving_for(metadata.serving, source=metadata.serving_source)
        wanted_threads = serving.intra_op_threads or available_cpus()
        if runtime.intra_op_threads != wanted_threads:
            # The thread count came from the ONNX file's own metadata, readable only once a session is open.
            runtime = self._open(model_file, wanted_threads)
        try:
            runtime.check_compatible(metadata.spec)
        except ValueError as exc:
            raise StartupError(f"{model_file.path.name}: the graph does not match its metadata: {exc}") from None
        model = ServedModel(
            name=model_file.name,
            path=model_file.path,
            spec=metadata.spec,
            serving=serving,
            overridden=tuple(metadata.serving.as_dict()),
            runtime=runtime,
            decode_options=DecodeOptions(
                max_image_pixels=settings.max_image_pixels, jpeg_draft=settings.jpeg_draft, memory=self.decode_memory
            ),
            metrics=self._metrics,
            worker_nice=settings.worker_nice,
        )
        spec = metadata.spec
        logger.info(
            "loaded model %s from %s: %d classes, %s %dx%d input, provider %s, %d intra-op threads, batch size %s%s",
            model.name,
            model_file.path,
            spec.num_classes,
            spec.color_mode,
            spec.crop_size,
            spec.crop_size,
            runtime.provider,
            runtime.intra_op_threads,
            serving.max_batch_size,
            f" (own serving settings: {', '.join(model.overridden)})" if model.overridden else "",
        )
        return model

    async def warm_up_and_start(self) -> bool:
        """Warm every model up and start its batcher, one model at a time; True when all are ready."""
        outcomes = [await model.warm_up_and_start() for model in self.models]
        return all(outcomes)

    async def batch1_seconds_per_image(self) -> dict[str, float]:
        """Each model's inference time for one image alone, timed now, once the server is ready: the fastest of
        many runs, so that a busy machine's stall does not make a cheap model look slow."""
        costs: dict[str, float] = {}
        for model in self.models:
            spec = model.spec
            shape = (spec.channels, spec.crop_size, spec.crop_size)
            costs[model.name] = await asyncio.to_thread(model.runtime.batch1_seconds, shape, spec.output_name)
        return costs

    async def close(self) -> None:
        for model in self.models:
            await model.close()
