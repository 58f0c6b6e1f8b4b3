"""The one schema that makes an ONNX classifier describe itself.

`models.export` writes a `ModelSpec` into the ONNX file's `metadata_props`; the service reads it back
(optionally overridden by a sidecar JSON file) to know the labels and the exact preprocessing. This module
is pure: no torch, no onnx, no onnxruntime, so both sides can import it.

Each field is stored under its own key, ``modelspec.<field>``, with a JSON-encoded value, so a tool such as
Netron shows the fields one by one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCHEMA_VERSION = 1
METADATA_PREFIX = "modelspec."
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

ColorMode = Literal["RGB", "L"]
Interpolation = Literal["nearest", "bilinear", "bicubic"]
Precision = Literal["fp32", "fp16", "int8"]


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
            raise ValueError(f"schema_version {self.schema_version} is newer than this code understands ({SCHEMA_VERSION})")
        return self


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
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg']}" for err in exc.errors()
        )
        raise ModelSpecError(f"{source}: invalid model metadata: {problems}") from None
