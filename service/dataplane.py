"""The one protocol-neutral data plane: every front end translates its wire format to an `InferenceRequest`, calls
`DataPlane.infer`, and translates the `InferenceResult` back. Nothing about inference happens anywhere else.

`infer` finds the model version (404, not ready), checks what is asked back when it is known before the body,
takes the request's one admission through the front end's body reader (`inference.RequestBody`), which counts
the bytes and images into the admission's `Ticket` as they arrive, then checks the inputs and outputs against
the model, decodes encoded images in its bounded thread pool (the model's `preprocess`), queues the tensors in the
model's batcher (which calls `run_batch`), ranks (`postprocess`) and builds the outputs, keeping the request's
deadline and the stage timings. Model descriptions and readiness come from here too, so that no front end
touches the registry. The data plane knows models only through `contract.ServableModel` and `ModelSource`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from service import tracing
from service.admission import Admission, ByteBudget, Ticket
from service.auth import current_key
from service.batching import ItemResult
from service.config import LimitsSettings
from service.contract import ModelDescription, ModelSource, ServableModel, VersionStatus
from service.errors import (
    ClientDisconnected,
    DeadlineExceeded,
    InvalidParameter,
    InvalidTensor,
    ModelControlOff,
    NotReady,
)
from service.inference import (
    DEFAULT_TOP_K,
    LOGITS,
    EncodedImages,
    ImageInfo,
    InferenceRequest,
    InferenceResult,
    ModelInputs,
    OutputResult,
    RequestedOutput,
    RequestParameters,
    StageTimings,
    TensorBatch,
)
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics
from service.model_control import Caller, ModelControl
from service.preprocess import ImageUpload, PreprocessedImage
from service.statistics import ModelStatistics

_T = TypeVar("_T")
_JSON_SLACK_VALUES = 4096
"""Numbers a request may hold beyond its images' values: shapes, sizes and parameters."""


@dataclass(frozen=True)
class _Deadline:
    at: float
    """Monotonic time."""
    message: str
    """What a request that misses it is told."""


@dataclass(frozen=True)
class _Inferred:
    logits: np.ndarray
    queue_wait_s: float
    inference_s: float
    started_at: float = 0.0
    """When the (last) batch that ran the request's images started, on the batcher's monotonic clock."""
    alone: bool = False
    """Decoded and inferred in one hand-off to the model's thread (`_run_alone`)."""


class DataPlane:
    """Serves inference for every protocol from the models of a `ModelSource`."""

    def __init__(
        self,
        models: ModelSource,
        *,
        lifecycle: Lifecycle,
        metrics: ServiceMetrics,
        limits: LimitsSettings,
        control: ModelControl | None = None,
        decode_threads: int,
        decode_thread_initializer: Callable[[], None] | None = None,
    ) -> None:
        self._models = models
        self._control = control
        self._lifecycle = lifecycle
        self._metrics = metrics
        self._limits = limits
        # Threads start on first use, not here: nothing runs until the server serves.
        self._decode_pool = ThreadPoolExecutor(
            max_workers=decode_threads, thread_name_prefix="decode", initializer=decode_thread_initializer
        )
        self.upload_bytes = ByteBudget(limits.max_inflight_bytes, metrics.inflight_upload_bytes.set)
        """Upload bytes all requests in flight hold together, over every front end."""

    @property
    def max_upload_bytes(self) -> int:
        return self._limits.max_upload_bytes

    @property
    def request_timeout_s(self) -> float:
        return self._limits.request_timeout_s

    @property
    def max_images_per_request(self) -> int:
        return self._limits.max_files_per_request

    def close(self) -> None:
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------------------------------------- what is served

    @property
    def ready(self) -> bool:
        """Every model has a ready version with its batcher running, the server is neither starting nor draining,
        and no other worker process that takes connections is still warming up."""
        return self._models.ready and self._lifecycle.ready_everywhere

    @property
    def phase(self) -> str:
        return str(self._lifecycle.phase)

    @property
    def default_model(self) -> str | None:
        return self._models.default_model

    def models(self) -> list[ModelDescription]:
        """Every model version, sorted by name and version."""
        return [model.describe() for model in self._models.all()]

    def model(self, name: str | None, version: str | None = None) -> ModelDescription:
        """One model version (None: the default model; no version: the one that answers); `ModelNotFound`."""
        return self._models.get(name, version).describe()

    def statistics(self, name: str | None = None, version: str | None = None) -> list[ModelStatistics]:
        """Triton's statistics of every model version, or of one model (`ModelNotFound` when unknown), summed over
        every worker process."""
        if name:
            chosen = [self._models.get(name, version)] if version else self._versions_of(name)
        else:
            chosen = list(self._models.all())
        return self._metrics.model_statistics_of((model.name, model.version) for model in chosen)

    def _versions_of(self, name: str) -> list[ServableModel]:
        self._models.get(name)  # ModelNotFound when there is no such model
        return [model for model in self._models.all() if model.name == name]

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether the model version takes requests now; `ModelNotFound` when there is no such model or version."""
        return self._models.get(name, version).ready and self._lifecycle.ready_everywhere

    # ---------------------------------------------------------------------------------------------- model control

    def repository_index(self) -> list[VersionStatus]:
        """Every model version on disk or loaded, with its state and the reason for a failure."""
        return self._controlled().index()

    async def load_model(self, name: str, caller: Caller, *, default_version: int | None = None) -> None:
        """Load or reload a model from the repository (new versions serve once ready, old ones close after their
        last request); `default_version` pins the version that answers requests naming none."""
        await self._controlled().load(name, caller, default_version=default_version)

    async def unload_model(self, name: str, caller: Caller) -> None:
        await self._controlled().unload(name, caller)

    def _controlled(self) -> ModelControl:
        if self._control is None:
            raise ModelControlOff("this server has no model control")
        return self._control

    # ---------------------------------------------------------------------------------------------- inference

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Admit, receive, check, decode, batch, infer, rank: the request's result, or a `ServiceError` that says
        why not. Any image that fails fails the whole request (naming its file) and affects no other request."""
        received_at = time.monotonic() if request.received_at is None else request.received_at
        model = self._admissible(request.model, request.version)
        outputs = None if request.outputs is None else self._checked_outputs(model, request.outputs)
        deadline = self._deadline(received_at, request.client_timeout_s, client_says="client's deadline")
        admission = Admission(
            model,
            received_at=received_at,
            deadline=deadline.at,
            budget=self.upload_bytes,
            max_images=self._limits.max_files_per_request,
            max_input_values=self._limits.max_files_per_request * model.spec.input_values + _JSON_SLACK_VALUES,
            on_admitted=self._metrics.requests.labels(model.name, model.version, request.protocol).inc,
        )
        statistics = self._metrics.model_statistics(model.name, model.version)
        tracing.annotate(model=model.name, **{"model.version": model.version})
        try:
            with tracing.stage("receive"):
                body = await request.body.receive(tracing.traced("admission", admission))
            ticket = admission.ticket
            if ticket is None:
                raise RuntimeError("the request body was received without admission")
            if outputs is None:
                outputs = self._checked_outputs(model, body.outputs or (LOGITS,))
            deadline = self._shortened(deadline, received_at, body.parameters)
            ticket.deadline = deadline.at
            inputs = self._checked_inputs(model, body.inputs)
            work = self._run(ticket, inputs, outputs, deadline)
            if body.client_gone is not None:
                result = await _unless_client_leaves(work, body.client_gone)
            else:
                result = await work
        except BaseException:
            statistics.record_failure(time.monotonic() - received_at)
            raise
        finally:
            admission.close()
        statistics.record_request(result[1])
        return InferenceResult(
            model=model.name,
            version=model.version,
            outputs=result[0],
            timings=result[1],
            images=result[2],
            request_id=body.request_id,
        )

    def _admissible(self, name: str | None, version: str | None) -> ServableModel:
        model = self._models.get(name, version)
        if not self._lifecycle.ready and self._lifecycle.accepting:
            raise NotReady("the server is still loading and warming up its models; retry shortly")
        if not model.ready:
            detail = f": {model.error}" if model.error else ""
            raise NotReady(f"model {model.name} is not ready ({model.state}{detail})")
        return model

    @staticmethod
    def _checked_outputs(model: ServableModel, outputs: Sequence[RequestedOutput]) -> list[RequestedOutput]:
        """Each output named as the model's, each k within its classes; k filled in where the request left it."""
        spec = model.spec
        checked = []
        for output in outputs:
            if output.name is not None and output.name != spec.output_name:
                raise InvalidTensor(f"unknown output {output.name!r}; the model's output is {spec.output_name!r}")
            if output.ranked:
                k = min(DEFAULT_TOP_K, spec.num_classes) if output.k is None else output.k
                if not 1 <= k <= spec.num_classes:
                    raise InvalidParameter(
                        f"{output.asked_as} must be between 1 and {spec.num_classes} (the number "
                        f"of classes of model {model.name}), got {k}"
                    )
                output = RequestedOutput(spec.output_name, ranked=True, k=k, asked_as=output.asked_as)
            else:
                output = RequestedOutput(spec.output_name)
            checked.append(output)
        return checked

    @staticmethod
    def _checked_inputs(model: ServableModel, inputs: ModelInputs) -> ModelInputs:
        spec = model.spec
        if inputs.input_name is not None and inputs.input_name != spec.input_name:
            raise InvalidTensor(f"unknown input {inputs.input_name!r}; the model's input is {spec.input_name!r}")
        if len(inputs) == 0:
            raise InvalidParameter(
                "the request carries no image: send multipart/form-data parts named 'file', a raw "
                "image body, or a batch dimension of at least 1"
            )
        if isinstance(inputs, TensorBatch):
            expected = spec.input_shape
            if inputs.array.ndim != 4 or inputs.array.shape[1:] != expected:
                raise InvalidTensor(
                    f"input {spec.input_name!r}: FP32 data must have shape "
                    f"[N, {', '.join(map(str, expected))}] (preprocessed NCHW), got "
                    f"{list(inputs.array.shape)}"
                )
        return inputs

    def _deadline(self, received_at: float, client_timeout_s: float | None, *, client_says: str) -> _Deadline:
        timeout_s = self._limits.request_timeout_s
        if client_timeout_s is not None and client_timeout_s < timeout_s:
            return _Deadline(
                received_at + client_timeout_s,
                f"no answer within the {client_says} of {client_timeout_s:.3g} s; its queued images were dropped",
            )
        return _Deadline(
            received_at + timeout_s,
            f"no answer within the request timeout of {timeout_s:g} s; the "
            f"server is busy, retry later or send fewer images",
        )

    def _shortened(self, deadline: _Deadline, received_at: float, parameters: RequestParameters) -> _Deadline:
        if parameters.timeout_s is None or received_at + parameters.timeout_s >= deadline.at:
            return deadline
        return self._deadline(received_at, parameters.timeout_s, client_says="request's timeout parameter")

    async def _run(
        self, ticket: Ticket, inputs: ModelInputs, outputs: Sequence[RequestedOutput], deadline: _Deadline
    ) -> tuple[list[OutputResult], StageTimings, list[ImageInfo] | None]:
        model = ticket.model
        images: list[ImageInfo] | None = None
        preprocess_s = 0.0
        try:
            async with asyncio.timeout(ticket.deadline - time.monotonic()):
                if len(inputs) == 1 and ticket.images.alone():
                    prepared, inferred = await self._run_alone(ticket, inputs)
                elif isinstance(inputs, EncodedImages):
                    with tracing.stage("decode"):
                        prepared = await self._decode(model, inputs.uploads)
                    inferred = await self._infer(ticket, [image.tensor for image in prepared])
                else:
                    prepared = None
                    inferred = await self._infer(ticket, list(inputs.array))
        except (TimeoutError, DeadlineExceeded):
            raise DeadlineExceeded(deadline.message) from None
        if prepared is not None and isinstance(inputs, EncodedImages):
            images = [
                ImageInfo(upload.filename, image.width, image.height)
                for upload, image in zip(inputs.uploads, prepared, strict=True)
            ]
            preprocess_s = max(image.seconds for image in prepared)
        self._metrics.images_classified.labels(model.name, model.version).inc(len(inputs))
        if tracing.enabled():
            tracing.annotate(images=len(inputs))
            alone_decode_s = preprocess_s if inferred.alone else 0.0
            tracing.ran(inferred.started_at, inferred.queue_wait_s, inferred.inference_s, alone_decode_s)
            tracing.encode_begins()
        ranked_at = time.monotonic()
        results = [
            OutputResult(output.name or model.spec.output_name, ranked=model.postprocess(inferred.logits, output.k))
            if output.ranked and output.k is not None
            else OutputResult(output.name or model.spec.output_name, logits=inferred.logits)
            for output in outputs
        ]
        timings = StageTimings(
            preprocess_s=preprocess_s,
            queue_wait_s=inferred.queue_wait_s,
            inference_s=inferred.inference_s,
            total_s=time.monotonic() - ticket.received_at,
            postprocess_s=time.monotonic() - ranked_at,
        )
        return results, timings, images

    async def _run_alone(self, ticket: Ticket, inputs: ModelInputs) -> tuple[list[PreprocessedImage] | None, _Inferred]:
        """A lone image on an idle model: decoded (when encoded) and inferred in one hand-off to the model's own
        thread, with no queue, decode pool or batcher wake-up in between; what arrives meanwhile is batched."""
        model = ticket.model
        if isinstance(inputs, EncodedImages):
            upload = inputs.uploads[0]
            self._metrics.images_decoded.labels(model.name, model.version).inc()

            def decode() -> tuple[PreprocessedImage | None, np.ndarray]:
                image = model.preprocess(upload)
                return image, image.tensor

            prepare = decode
        else:
            tensor = inputs.array[0]

            def prepare() -> tuple[PreprocessedImage | None, np.ndarray]:
                return None, tensor

        image, result = await ticket.images.run_alone(prepare)
        inferred = _Inferred(result.value[None], result.queue_wait_s, result.inference_s, result.started_at, alone=True)
        if image is None:
            return None, inferred
        self._metrics.preprocess_seconds.labels(model.name, model.version).observe(image.seconds)
        return [image], inferred

    async def _decode(self, model: ServableModel, uploads: Sequence[ImageUpload]) -> list[PreprocessedImage]:
        """The model's preprocess stage for every upload, in parallel in the decode pool; the first error wins."""
        loop = asyncio.get_running_loop()
        self._metrics.images_decoded.labels(model.name, model.version).inc(len(uploads))
        jobs = [loop.run_in_executor(self._decode_pool, model.preprocess, upload) for upload in uploads]
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        prepared: list[PreprocessedImage] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            prepared.append(outcome)
        histogram = self._metrics.preprocess_seconds.labels(model.name, model.version)
        for image in prepared:
            histogram.observe(image.seconds)
        return prepared

    async def _infer(self, ticket: Ticket, tensors: Sequence[np.ndarray]) -> _Inferred:
        """Queue the request's tensors in its reserved room, at its API key's priority, and wait for their logits."""
        key = current_key.get()
        priority = key.priority.rank if key is not None else 0
        futures = ticket.images.submit(list(tensors), ticket.deadline, priority)
        try:
            results: list[ItemResult[np.ndarray]] = list(await asyncio.gather(*futures))
        finally:
            # Leaving early (error, timeout, client gone) cancels the rest, so the batcher drops them unrun.
            for future in futures:
                future.cancel()
        return _Inferred(
            logits=np.stack([result.value for result in results]),
            queue_wait_s=max(result.queue_wait_s for result in results),
            inference_s=max(result.inference_s for result in results),
            started_at=max(result.started_at for result in results),
        )


async def _unless_client_leaves(work: Awaitable[_T], client_gone: Callable[[], Awaitable[None]]) -> _T:
    """Run `work`, cancelling it if the client leaves first (its queued images are then dropped)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(client_gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise ClientDisconnected("the client disconnected before its images were classified")
    finally:
        watcher.cancel()
        task.cancel()
