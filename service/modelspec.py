"""The one schema that makes an ONNX classifier describe itself, and how it wants to be served.

`models.export` writes a `ModelSpec` into the ONNX file's `metadata_props`; the service reads it back
(optionally overridden by a sidecar JSON file) to know the labels and the exact preprocessing. A model may also
carry `ServingOverrides` (its own batch size, delay, queue and threads), which win over the server's flags for
that model. This module is pure: no torch, no onnx, no onnxruntime, so both sides can import it.

Each field is stored under its own key, ``modelspec.<field>`` or ``serving.<field>``, with a JSON-encoded value,
so a tool such as Netron shows the fields one by one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_validator

SCHEMA_VERSION = 1
METADATA_PREFIX = "modelspec."
SERVING_METADATA_PREFIX = "serving."
SERVING_SIDECAR_KEY = "serving"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

ColorMode = Literal["RGB", "L"]
Interpolation = Literal["nearest", "bilinear", "bicubic"]
Precision = Literal["fp32", "fp16", "int8"]


# The rules of the per-model serving settings, shared by the server's flags (service.config.Settings) and a
# model's own `serving` section, so that both are validated alike.
BatchSize = Annotated[int, Field(ge=1, le=1024)]
AUTO = "auto"
MAX_BATCH_SIZE = 1024


def _batch_size_setting(value: object) -> int | str:
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise ValueError(f"must be a whole number from 1 to {MAX_BATCH_SIZE}, or 'auto'; got {value!r}")
    size = int(value)
    if not 1 <= size <= MAX_BATCH_SIZE:
        raise ValueError(f"must be between 1 and {MAX_BATCH_SIZE}, or 'auto'; got {size}")
    return size


BatchSizeSetting = Annotated[int | str, PlainValidator(_batch_size_setting)]
"""A batch size from 1 to 1024, or "auto": measured at start-up (service.autotune)."""
BatchDelayMs = Annotated[float, Field(ge=0.0, le=10_000.0)]
QueueSize = Annotated[int, Field(ge=1)]
QueueWaitMs = Annotated[float, Field(gt=0.0)]
ThreadCount = Annotated[int, Field(ge=1)]
MemoryMiB = Annotated[float, Field(gt=0.0)]


class ModelSpecError(ValueError):
    """A model's metadata is missing or invalid; the message says which fields and why."""


class ModelSpec(BaseModel):
    """What a served classifier needs besides its weights: labels and the preprocessing it was trained with."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    labels: list[str] = Field(min_length=1)
    """Class names, index i is the label of logit i."""
    color_mode: ColorMode
    """PIL mode the image is converted to before anything else: 'RGB' (3 channels) or 'L' (1 channel)."""
    resize_size: int = Field(gt=0)
    """The shorter image side is resized to this many pixels (torchvision's Resize(int))."""
    crop_size: int = Field(gt=0)
    """Then a centred square of this side is cut out (torchvision's CenterCrop); the network's input size."""
    interpolation: Interpolation = "bilinear"
    """Resampling filter for the resize; antialiased, as torchvision does on PIL images."""
    mean: list[float]
    """Per-channel mean subtracted after scaling pixels to [0, 1]."""
    std: list[float]
    """Per-channel standard deviation divided by after the mean."""
    architecture: str = "unknown"
    """Network architecture, for people (for example 'resnet20' or 'resnet50')."""
    dataset: str = "unknown"
    """Data set the weights were trained on, for people."""
    test_accuracy: float | None = None
    """Top-1 accuracy measured on the data set's test split at export time, if known."""
    precision: Precision = "fp32"
    """Numeric precision of the weights: fp32, fp16 (inputs and outputs stay float32) or int8 (quantized)."""
    input_name: str = INPUT_NAME
    """Name of the ONNX graph input (float32, NCHW, dynamic batch axis)."""
    output_name: str = OUTPUT_NAME
    """Name of the ONNX graph output (float32 logits, shape [batch, len(labels)])."""
    schema_version: int = SCHEMA_VERSION
    """Version of this schema the file was written with."""

    @property
    def channels(self) -> int:
        return 3 if self.color_mode == "RGB" else 1

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One image's input tensor: (channels, crop_size, crop_size)."""
        return (self.channels, self.crop_size, self.crop_size)

    @property
    def input_values(self) -> int:
        """Numbers in one image's input tensor."""
        return self.channels * self.crop_size * self.crop_size

    @model_validator(mode="after")
    def _check_consistency(self) -> ModelSpec:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != self.channels:
                raise ValueError(
                    f"{name} has {len(values)} values but color_mode {self.color_mode!r} has {self.channels} channel(s)"
                )
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        if self.crop_size > self.resize_size:
            raise ValueError(f"crop_size {self.crop_size} is larger than resize_size {self.resize_size}")
        if self.schema_version > SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {self.schema_version} is newer than this code understands ({SCHEMA_VERSION})"
            )
        return self


class ServingOverrides(BaseModel):
    """A model's own serving settings; each one set here wins over the server's flag of the same name."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    max_batch_size: BatchSizeSetting | None = None
    """Most images one inference call of this model processes, or "auto" (measured at start-up)."""
    max_batch_delay_ms: BatchDelayMs | None = None
    """How long this model's first queued image may wait for more to fill its batch."""
    max_queue_size: QueueSize | None = None
    """Images waiting for this model beyond which new requests are refused with 503."""
    max_queue_wait_ms: QueueWaitMs | None = None
    """Refuse a request when its images would wait longer than this for this model."""
    intra_op_threads: ThreadCount | None = None
    """ONNX Runtime threads of this model's session."""
    batch_memory_budget_mb: MemoryMiB | None = None
    """Memory this model's batches may hold beyond its weights, which caps an "auto" batch size."""

    def as_dict(self) -> dict[str, Any]:
        """Only the settings this model sets."""
        return self.model_dump(exclude_none=True)


REQUIRED_FIELDS = tuple(name for name, field in ModelSpec.model_fields.items() if field.is_required())


def to_metadata_props(spec: ModelSpec) -> dict[str, str]:
    """The spec as ONNX ``metadata_props`` entries: one key per field, JSON values."""
    return {METADATA_PREFIX + key: json.dumps(value) for key, value in spec.model_dump().items()}


def fields_from_metadata_props(props: Mapping[str, str]) -> dict[str, Any]:
    """The spec fields found in ONNX metadata, decoded; keys without our prefix are ignored."""
    fields: dict[str, Any] = {}
    for key, raw in props.items():
        if not key.startswith(METADATA_PREFIX):
            continue
        name = key[len(METADATA_PREFIX) :]
        try:
            fields[name] = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ModelSpecError(f"metadata key {key!r} is not valid JSON: {exc}") from None
    return fields


def build_spec(
    embedded: Mapping[str, Any] | None = None,
    sidecar: Mapping[str, Any] | None = None,
    *,
    source: str = "model",
) -> ModelSpec:
    """Merge embedded metadata fields with a sidecar's (the sidecar wins) into a validated spec.

    Raises ModelSpecError naming the missing or invalid fields and where they can be supplied.
    """
    merged = {**(embedded or {}), **(sidecar or {})}
    missing = [name for name in REQUIRED_FIELDS if name not in merged]
    if missing:
        raise ModelSpecError(
            f"{source}: missing model metadata field(s) {', '.join(missing)}; export with `python -m models.export` "
            f"to embed them, or put them in a sidecar JSON file next to the .onnx file (same name, .json extension)"
        )
    try:
        return ModelSpec.model_validate(merged)
    except ValidationError as exc:
        raise ModelSpecError(f"{source}: invalid model metadata: {_problems(exc)}") from None


def _problems(exc: ValidationError, prefix: str = "") -> str:
    return "; ".join(f"{prefix}{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}" for err in exc.errors())


def serving_to_metadata_props(overrides: ServingOverrides) -> dict[str, str]:
    """The overrides that are set, as ONNX ``metadata_props`` entries ``serving.<field>``."""
    return {SERVING_METADATA_PREFIX + key: json.dumps(value) for key, value in overrides.as_dict().items()}


def build_serving_overrides(
    embedded: Mapping[str, str] | None = None,
    sidecar: Any = None,
    *,
    source: str = "model",
) -> ServingOverrides:
    """A model's serving overrides: ONNX metadata ``serving.*`` keys, then its sidecar's ``serving`` object.

    Raises ModelSpecError naming `source` and the field, for example
    ``resnet50.json: serving.max_batch_size: Input should be less than or equal to 1024``.
    """
    merged: dict[str, Any] = {}
    for key, raw in (embedded or {}).items():
        if key.startswith(SERVING_METADATA_PREFIX):
            try:
                merged[key[len(SERVING_METADATA_PREFIX) :]] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ModelSpecError(f"{source}: metadata key {key!r} is not valid JSON: {exc}") from None
    if sidecar is not None:
        if not isinstance(sidecar, Mapping):
            raise ModelSpecError(f"{source}: '{SERVING_SIDECAR_KEY}' must be a JSON object of serving settings")
        merged.update(sidecar)
    try:
        return ServingOverrides.model_validate(merged)
    except ValidationError as exc:
        raise ModelSpecError(f"{source}: {_problems(exc, SERVING_SIDECAR_KEY + '.')}") from None
