"""The protocol-agnostic request path: raw image bytes and parameters in, classifications out.

Stages, in order: admit (model exists and is ready, parameters valid, queue has room), decode and preprocess
(thread pool), batch and infer (the model's `DynamicBatcher`), postprocess (softmax, top-k), encode (left to the
protocol: the HTTP routes turn `ClassifyOutcome` into JSON; a KServe V2 route would reuse this class as is).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from service.batching import DynamicBatcher, ItemResult
from service.errors import (
    DeadlineExceeded,
    InvalidParameter,
    ModelNotFound,
    NotReady,
    Overloaded,
    ServiceError,
    TooManyFiles,
)
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics
from service.modelspec import ModelSpec
from service.postprocess import softmax, top_k as rank_top_k
from service.preprocess import DecodeOptions, PreprocessedImage, preprocess_image

DEFAULT_TOP_K = 5


class ModelState(StrEnum):
    LOADED = "loaded"
    WARMING_UP = "warming_up"
    READY = "ready"
    FAILED = "failed"


@dataclass(eq=False)
class ServedModel:
    """A model as served: its file, spec, runtime, batcher and state."""

    name: str
    path: Path
    spec: ModelSpec
    runtime: Any
    """The `OnnxModelRuntime` (or a stand-in with the same methods)."""
    batcher: DynamicBatcher[np.ndarray, np.ndarray]
    state: ModelState = ModelState.LOADED
    error: str | None = None


@dataclass(frozen=True)
class ImageUpload:
    """One image as received, before decoding."""

    data: bytes
    filename: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class ScoredLabel:
    index: int
    label: str
    score: float


@dataclass(frozen=True)
class ImageClassification:
    filename: str | None
    width: int
    height: int
    top_k: list[ScoredLabel]


@dataclass(frozen=True)
class StageTimings:
    """Seconds per stage; for a request of several images, the slowest image's time in each stage."""

    preprocess_s: float
    queue_wait_s: float
    inference_s: float
    total_s: float


@dataclass(frozen=True)
class ClassifyOutcome:
    model: str
    results: list[ImageClassification]
    timings: StageTimings


class DataPlane:
    """Classifies images with the served models; shared by every protocol front end."""

    def __init__(
        self,
        models: Mapping[str, ServedModel],
        *,
        default_model: str,
        lifecycle: Lifecycle,
        metrics: ServiceMetrics,
        decode_executor: Executor,
        decode_options: DecodeOptions,
        request_timeout_s: float,
        max_files_per_request: int,
    ) -> None:
        self._models = dict(models)
        self.default_model = default_model
        self._lifecycle = lifecycle
        self._metrics = metrics
        self._decode_executor = decode_executor
        self._decode_options = decode_options
        self.request_timeout_s = request_timeout_s
        self.max_files_per_request = max_files_per_request

    @property
    def ready(self) -> bool:
        """Every model warmed up with its batcher running, and the server neither starting nor draining."""
        return self._lifecycle.ready and all(
            m.state is ModelState.READY and m.batcher.running for m in self._models.values()
        )

    @property
    def models(self) -> list[ServedModel]:
        return [self._models[name] for name in sorted(self._models)]

    def get(self, name: str | None) -> ServedModel:
        """The named model, or the default one for None; ModelNotFound if there is no such model."""
        key = self.default_model if name is None else name
        try:
            return self._models[key]
        except KeyError:
            raise ModelNotFound(
                f"no model named {key!r}; served models: {', '.join(sorted(self._models))}"
            ) from None

    def admit(self, model_name: str | None, top_k: int | None, image_count: int | None = None) -> tuple[ServedModel, int]:
        """Everything that can be refused before the upload is read: model, readiness, top_k, queue room.

        Returns the model and the effective k.
        """
        model = self.get(model_name)
        if not self._lifecycle.ready and self._lifecycle.accepting:
            raise NotReady("the server is still loading and warming up its models; retry shortly")
        if model.state is not ModelState.READY:
            detail = f": {model.error}" if model.error else ""
            raise NotReady(f"model {model.name} is not ready ({model.state}{detail})")
        num_classes = model.spec.num_classes
        k = min(DEFAULT_TOP_K, num_classes) if top_k is None else top_k
        if not 1 <= k <= num_classes:
            raise InvalidParameter(
                f"top_k must be between 1 and {num_classes} (the number of classes of model {model.name}), got {k}"
            )
        if image_count is not None:
            self._check_count(image_count)
            if not model.batcher.has_room(image_count):
                raise Overloaded(model.batcher.overload_message(image_count))
        return model, k

    def _check_count(self, image_count: int) -> None:
        if image_count < 1:
            raise InvalidParameter(
                "the request carries no image: send multipart/form-data parts named 'file' or a raw image body"
            )
        if image_count > self.max_files_per_request:
            raise TooManyFiles(
                f"{image_count} images in one request; the limit is {self.max_files_per_request}"
            )

    async def classify(
        self,
        model_name: str | None,
        uploads: Sequence[ImageUpload],
        top_k: int | None,
        *,
        received_at: float | None = None,
    ) -> ClassifyOutcome:
        """Decode, batch, infer and rank `uploads`; results are in upload order.

        `received_at` (time.monotonic() when the request arrived, default now) starts the request's deadline.
        Any image that fails fails the whole request (with that file named) and affects no other request.
        """
        started = time.monotonic() if received_at is None else received_at
        deadline = started + self.request_timeout_s
        model, k = self.admit(model_name, top_k, len(uploads))
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                prepared = await self._preprocess(model, uploads)
                results = await self._infer(model, prepared, deadline)
        except TimeoutError:
            raise DeadlineExceeded(
                f"no answer within the request timeout of {self.request_timeout_s:g} s; the server is busy, "
                f"retry later or send fewer images"
            ) from None
        logits = np.stack([result.value for result in results])
        indices, scores = rank_top_k(softmax(logits), k)
        labels = model.spec.labels
        classifications = [
            ImageClassification(
                filename=upload.filename,
                width=image.width,
                height=image.height,
                top_k=[ScoredLabel(int(i), labels[int(i)], float(s)) for i, s in zip(row_indices, row_scores)],
            )
            for upload, image, row_indices, row_scores in zip(uploads, prepared, indices, scores)
        ]
        self._metrics.images_classified.labels(model.name).inc(len(uploads))
        timings = StageTimings(
            preprocess_s=max(image.seconds for image in prepared),
            queue_wait_s=max(result.queue_wait_s for result in results),
            inference_s=max(result.inference_s for result in results),
            total_s=time.monotonic() - started,
        )
        return ClassifyOutcome(model=model.name, results=classifications, timings=timings)

    async def _preprocess(self, model: ServedModel, uploads: Sequence[ImageUpload]) -> list[PreprocessedImage]:
        loop = asyncio.get_running_loop()
        jobs = [
            loop.run_in_executor(
                self._decode_executor, preprocess_image, upload.data, model.spec, self._decode_options,
                upload.content_type,
            )
            for upload in uploads
        ]
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        prepared: list[PreprocessedImage] = []
        for upload, outcome in zip(uploads, outcomes):
            if isinstance(outcome, ServiceError):
                raise outcome.for_file(upload.filename)
            if isinstance(outcome, BaseException):
                raise outcome
            prepared.append(outcome)
        histogram = self._metrics.preprocess_seconds.labels(model.name)
        for image in prepared:
            histogram.observe(image.seconds)
        return prepared

    async def _infer(self, model: ServedModel, prepared: list[PreprocessedImage], deadline: float
                     ) -> list[ItemResult[np.ndarray]]:
        futures = model.batcher.submit([image.tensor for image in prepared], deadline)
        try:
            return list(await asyncio.gather(*futures))
        finally:
            # Leaving early (error, timeout, client gone) cancels the rest, so the batcher drops them unrun.
            for future in futures:
                future.cancel()
