"""Response models of the HTTP API (they are also what /docs shows)."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from service.contract import ModelDescription
from service.inference import InferenceResult


class _Schema(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)


class ScoredLabelOut(_Schema):
    index: int
    """Class index (position in the model's labels)."""
    label: str
    score: float
    """Softmax probability."""


class ClassificationOut(_Schema):
    filename: str | None
    """The multipart part's filename; null for a raw-body upload."""
    width: int
    """Width of the uploaded image in pixels, after EXIF orientation."""
    height: int
    top_k: list[ScoredLabelOut]
    """The k most probable classes, highest first."""


class StageTimingsOut(_Schema):
    """Server-side milliseconds; for several images, the slowest image's time in each stage."""

    preprocess: float
    """Decoding and preprocessing."""
    queue_wait: float
    """Waiting in the batcher queue for a batch to start."""
    inference: float
    """The ONNX Runtime call for the batch the image ran in."""
    total: float
    """From the request's arrival to the ranked results (excluding sending the response)."""


class ClassifyResponse(_Schema):
    model: str
    version: str
    """The model version that answered."""
    results: list[ClassificationOut]
    """One entry per uploaded image, in upload order."""
    timings_ms: StageTimingsOut

    @classmethod
    def from_result(cls, result: InferenceResult) -> ClassifyResponse:
        """The answer to a classify request: its images, in upload order, with their ranked labels."""
        t = result.timings
        (ranked_output,) = result.outputs
        assert result.images is not None and ranked_output.ranked is not None
        return cls(
            model=result.model,
            version=result.version,
            results=[
                ClassificationOut(
                    filename=image.filename,
                    width=image.width,
                    height=image.height,
                    top_k=[ScoredLabelOut(index=s.index, label=s.label, score=s.score) for s in ranked],
                )
                for image, ranked in zip(result.images, ranked_output.ranked, strict=True)
            ],
            timings_ms=StageTimingsOut(
                preprocess=t.preprocess_s * 1000,
                queue_wait=t.queue_wait_s * 1000,
                inference=t.inference_s * 1000,
                total=t.total_s * 1000,
            ),
        )


class InputSpecOut(_Schema):
    name: str
    shape: list[int | None]
    """NCHW; null marks the dynamic batch axis."""
    dtype: str


class PreprocessingOut(_Schema):
    color_mode: str
    resize_size: int
    crop_size: int
    interpolation: str
    mean: list[float]
    std: list[float]


class BatchSizeTimingOut(_Schema):
    batch_size: int
    images_per_second: float
    """Served: the hand-off to the model's thread, stacking and the session's run."""
    inference_images_per_second: float | None
    """The session's run alone."""
    memory_mb: float | None
    """Resident memory the model held above its weights after its first batch of this size."""


class BatchingOut(_Schema):
    """The model's effective serving settings: the server's flags, overridden by the model's own `serving`
    section (listed in `overridden`)."""

    max_batch_size: int
    max_batch_size_source: str
    """auto (tuned while serving, see batch_curve; "auto (tuning)" until done), model (its serving section), flag,
    or fixed batch axis."""
    batch_curve: list[BatchSizeTimingOut] | None
    """With auto: what was measured at each batch size tried so far."""
    batch_memory_budget_mb: float | None
    """What an auto batch size's memory must fit."""
    max_batch_delay_ms: float
    max_queue_size: int
    max_queue_wait_ms: float | None
    queue_depth: int
    seconds_per_image: float | None
    """Measured inference seconds per image over recent batches; null before the first batch."""
    overridden: list[str]
    """Which of these settings come from the model's own `serving` section (sidecar or ONNX metadata)."""


class VersionOut(_Schema):
    version: str
    state: str
    """loaded, warming_up, ready, unloading or failed."""
    error: str | None = None


class ModelOut(_Schema):
    name: str
    version: str
    """The version described: the one that answers requests naming none, unless a version was asked for."""
    versions: list[VersionOut]
    """Every version the server has of this model, with its state."""
    ready: bool
    state: str
    """loaded, warming_up, ready, unloading or failed."""
    error: str | None = None
    labels: list[str]
    input: InputSpecOut
    output_name: str
    preprocessing: PreprocessingOut
    architecture: str
    dataset: str
    test_accuracy: float | None
    precision: str
    """Weights' numeric precision: fp32, fp16 or int8 (inputs and outputs are float32 either way)."""
    execution_provider: str
    intra_op_threads: int
    batching: BatchingOut
    default: bool
    """Whether POST /v1/classify uses this model."""

    @classmethod
    def from_description(cls, model: ModelDescription, versions: Sequence[ModelDescription] = ()) -> ModelOut:
        spec = model.spec
        serving = model.serving
        return cls(
            name=model.name,
            version=model.version,
            versions=[VersionOut(version=v.version, state=str(v.state), error=v.error) for v in versions or (model,)],
            ready=model.state == "ready",
            state=str(model.state),
            error=model.error,
            labels=list(spec.labels),
            input=InputSpecOut(
                name=spec.input_name, shape=[None, spec.channels, spec.crop_size, spec.crop_size], dtype="float32"
            ),
            output_name=spec.output_name,
            preprocessing=PreprocessingOut(
                color_mode=spec.color_mode,
                resize_size=spec.resize_size,
                crop_size=spec.crop_size,
                interpolation=spec.interpolation,
                mean=list(spec.mean),
                std=list(spec.std),
            ),
            architecture=spec.architecture,
            dataset=spec.dataset,
            test_accuracy=spec.test_accuracy,
            precision=spec.precision,
            execution_provider=model.execution_provider,
            intra_op_threads=model.intra_op_threads,
            batching=BatchingOut(
                max_batch_size=serving.max_batch_size,
                max_batch_size_source=model.batch_size_source,
                batch_curve=None
                if model.batch_curve is None
                else [
                    BatchSizeTimingOut(
                        batch_size=t.batch_size,
                        images_per_second=t.images_per_second,
                        inference_images_per_second=None if t.inference_s is None else t.batch_size / t.inference_s,
                        memory_mb=None if t.memory_bytes is None else t.memory_bytes / 2**20,
                    )
                    for t in model.batch_curve.timings
                ],
                batch_memory_budget_mb=serving.batch_memory_budget_mb,
                max_batch_delay_ms=serving.max_batch_delay_ms,
                max_queue_size=serving.max_queue_size,
                max_queue_wait_ms=serving.max_queue_wait_ms,
                queue_depth=model.queue_depth,
                seconds_per_image=model.seconds_per_image,
                overridden=list(model.overridden),
            ),
            default=model.is_default,
        )


class ModelListOut(_Schema):
    default_model: str
    models: list[ModelOut]


class ErrorDetail(_Schema):
    status: int
    code: str
    """Stable machine-readable code, for example invalid_image or overloaded."""
    message: str
    """What went wrong, for a person."""
    filename: str | None = None
    """The uploaded file the error is about, when it is about one."""


class ErrorResponse(_Schema):
    error: ErrorDetail


class ReadinessOut(_Schema):
    status: str
    """ready, starting, draining or stopped."""
    models: dict[str, str]
    """Each model's state."""


class LivenessOut(_Schema):
    status: str
