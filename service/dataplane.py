"""The protocol-agnostic request path, shared by every front end: admit -> decode -> batch and infer -> rank.

`admit` is the one admission decision, taken before any of the body is read; it returns the request's `Ticket`,
which holds room for its images and its upload bytes until the request ends. Each later stage is separately
callable, so a front end that receives tensors already preprocessed skips decoding and goes straight to
`infer`. The stages themselves belong to the model (`registry.ModelContract`); this class only orders them, runs
decoding in its bounded thread pool, keeps the request's deadline and records the timings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.admission import ByteBudget, Ticket
from service.batching import ItemResult
from service.errors import DeadlineExceeded, InvalidParameter, NotReady
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics
from service.postprocess import ScoredLabel
from service.preprocess import ImageUpload, PreprocessedImage
from service.registry import ModelRegistry, ModelState, ServedModel

DEFAULT_TOP_K = 5


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
class ImagesInferred:
    logits: np.ndarray
    images: list[PreprocessedImage]
    timings: StageTimings


@dataclass(frozen=True)
class ClassifyOutcome:
    model: str
    results: list[ImageClassification]
    timings: StageTimings


@dataclass(frozen=True)
class Inference:
    """Logits for a list of tensors, in order, and the slowest tensor's time in the queue and in the model."""

    logits: np.ndarray
    queue_wait_s: float
    inference_s: float


class DataPlane:
    """Classifies images with the registry's models; the one path every protocol front end calls."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        lifecycle: Lifecycle,
        metrics: ServiceMetrics,
        decode_threads: int,
        decode_thread_initializer: Callable[[], None] | None = None,
        request_timeout_s: float,
        max_files_per_request: int,
        max_upload_bytes: int,
        max_inflight_bytes: int,
    ) -> None:
        self.registry = registry
        self._lifecycle = lifecycle
        self._metrics = metrics
        # Threads start on first use, not here: nothing runs until the server serves.
        self._decode_pool = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="decode",
                                               initializer=decode_thread_initializer)
        self.request_timeout_s = request_timeout_s
        self.max_files_per_request = max_files_per_request
        self.max_upload_bytes = max_upload_bytes
        self.upload_bytes = ByteBudget(max_inflight_bytes, metrics.inflight_upload_bytes.set)

    @property
    def ready(self) -> bool:
        """Every model warmed up with its batcher running, and the server neither starting nor draining."""
        return self._lifecycle.ready and self.registry.ready

    @property
    def phase(self) -> str:
        return str(self._lifecycle.phase)

    def close(self) -> None:
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    def admit(self, model_name: str | None, top_k: int | None = None, *, declared_bytes: int | None = None,
              received_at: float | None = None, protocol: str = "v1") -> Ticket:
        """The one admission decision, before any of the body is read: model, readiness, k, room for one image
        in the model's queue and wait bound, and the declared body size in the upload byte budget.

        The returned ticket is the request's from now on; close it (or use it as a context manager) when the
        request ends, whatever the outcome. Raises ModelNotFound, NotReady, InvalidParameter or Overloaded."""
        model = self.registry.get(model_name)
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
        started = time.monotonic() if received_at is None else received_at
        ticket = Ticket(model, top_k=k, received_at=started, deadline=started + self.request_timeout_s,
                        images=model.batcher.reserve(1), budget=self.upload_bytes,
                        max_images=self.max_files_per_request)
        try:
            if declared_bytes:
                ticket.expect_bytes(declared_bytes)
        except BaseException:
            ticket.close()
            raise
        self._metrics.requests.labels(model.name, protocol).inc()
        return ticket

    def _deadline_exceeded(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"no answer within the request timeout of {self.request_timeout_s:g} s; the server is busy, "
            f"retry later or send fewer images"
        )

    async def classify(self, ticket: Ticket, uploads: Sequence[ImageUpload]) -> ClassifyOutcome:
        """Decode, batch, infer and rank the admitted request's `uploads`; results are in upload order.

        Any image that fails fails the whole request (with that file named) and affects no other request."""
        inferred = await self.infer_images(ticket, uploads)
        ranked = ticket.model.postprocess(inferred.logits, ticket.top_k)
        return ClassifyOutcome(
            model=ticket.model.name,
            results=[
                ImageClassification(upload.filename, image.width, image.height, labels)
                for upload, image, labels in zip(uploads, inferred.images, ranked)
            ],
            timings=inferred.timings,
        )

    async def infer_images(self, ticket: Ticket, uploads: Sequence[ImageUpload]) -> ImagesInferred:
        """Decode and infer the admitted request's encoded images: their logits, in upload order."""
        if not uploads:
            raise InvalidParameter(
                "the request carries no image: send multipart/form-data parts named 'file' or a raw image body"
            )
        ticket.count_images(len(uploads))
        model = ticket.model
        async with self._deadline(ticket):
            prepared = await self.decode(model, uploads)
            inference = await self.infer(ticket, [image.tensor for image in prepared])
        self._metrics.images_classified.labels(model.name).inc(len(uploads))
        return ImagesInferred(
            logits=inference.logits,
            images=prepared,
            timings=StageTimings(
                preprocess_s=max(image.seconds for image in prepared),
                queue_wait_s=inference.queue_wait_s,
                inference_s=inference.inference_s,
                total_s=time.monotonic() - ticket.received_at,
            ),
        )

    async def infer_tensors(self, ticket: Ticket, batch: np.ndarray) -> Inference:
        """Infer an admitted batch already preprocessed (N, C, H, W float32): no decoding."""
        ticket.count_images(len(batch))
        async with self._deadline(ticket):
            inference = await self.infer(ticket, list(batch))
        self._metrics.images_classified.labels(ticket.model.name).inc(len(batch))
        return inference

    @asynccontextmanager
    async def _deadline(self, ticket: Ticket) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(ticket.deadline - time.monotonic()):
                yield
        except TimeoutError:
            raise self._deadline_exceeded() from None

    async def decode(self, model: ServedModel, uploads: Sequence[ImageUpload]) -> list[PreprocessedImage]:
        """The model's preprocess stage for every upload, in parallel in the decode pool; the first error wins."""
        loop = asyncio.get_running_loop()
        self._metrics.images_decoded.labels(model.name).inc(len(uploads))
        jobs = [loop.run_in_executor(self._decode_pool, model.preprocess, upload) for upload in uploads]
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        prepared: list[PreprocessedImage] = list(outcomes)  # type: ignore[arg-type]
        histogram = self._metrics.preprocess_seconds.labels(model.name)
        for image in prepared:
            histogram.observe(image.seconds)
        return prepared

    async def infer(self, ticket: Ticket, tensors: Sequence[np.ndarray]) -> Inference:
        """Queue the admitted request's `tensors` in its reserved room and wait for their logits."""
        futures = ticket.images.submit(list(tensors), ticket.deadline)
        try:
            results: list[ItemResult[np.ndarray]] = list(await asyncio.gather(*futures))
        finally:
            # Leaving early (error, timeout, client gone) cancels the rest, so the batcher drops them unrun.
            for future in futures:
                future.cancel()
        return Inference(
            logits=np.stack([result.value for result in results]),
            queue_wait_s=max(result.queue_wait_s for result in results),
            inference_s=max(result.inference_s for result in results),
        )
