"""The Open Inference Protocol's tensors, without the transport: pure functions shared by the REST and gRPC front
ends. Requests come in as `InferRequest` (inputs with their raw or JSON data), are checked against the model, and
turn into encoded images or an FP32 batch; answers go out as `OutputTensor`s (logits or classification strings).

Binary tensors follow Triton's binary tensor data extension: BYTES elements each carry a 4-byte little-endian
length prefix; FP32 data is little-endian, row-major. Every malformed size, shape or datatype is an
`InvalidTensor` (400) whose message says what was wrong; nothing here allocates more than the request's own data,
except the Python values of JSON data, which `check_json_size` bounds first.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import InvalidParameter, InvalidTensor, TooManyFiles, UploadTooLarge
from service.modelspec import ModelSpec
from service.postprocess import ScoredLabel

BYTES = "BYTES"
FP32 = "FP32"
_LENGTH_PREFIX = struct.Struct("<I")


@dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: memoryview | bytes | None = None
    """Binary data (REST binary extension or gRPC raw_input_contents)."""
    values: Any = None
    """Or data given as values (REST JSON `data`, gRPC `contents`)."""


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None
    """None: the request's default (REST `binary_data_output`; gRPC always raw)."""
    classification: int | None = None
    """With the classification extension: the top k as strings instead of the tensor."""


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None
    """None: every output of the model, in the request's default form."""
    binary_output: bool = False


@dataclass(frozen=True)
class ModelInput:
    """What a request carries for the model: encoded images (BYTES), or a preprocessed FP32 batch."""

    images: list[bytes] | None = None
    batch: np.ndarray | None = None

    @property
    def count(self) -> int:
        return len(self.images) if self.images is not None else len(self.batch)  # type: ignore[arg-type]


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray | None = None
    """FP32 data."""
    strings: list[bytes] = field(default_factory=list)
    """BYTES data, row-major."""

    def raw(self) -> bytes:
        """The binary form: little-endian FP32, or length-prefixed BYTES elements."""
        if self.array is not None:
            return np.ascontiguousarray(self.array, dtype="<f4").tobytes()
        return b"".join(_LENGTH_PREFIX.pack(len(s)) + s for s in self.strings)

    def values(self) -> list[Any]:
        """The JSON form, flattened row-major as the protocol writes `data`."""
        if self.array is not None:
            return self.array.reshape(-1).tolist()
        return [s.decode("utf-8") for s in self.strings]


def input_shape(spec: ModelSpec) -> list[int]:
    """The model's FP32 input as the protocol describes it: [-1, C, H, W]."""
    return [-1, spec.channels, spec.crop_size, spec.crop_size]


def _shape(shape: Sequence[int], name: str) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidTensor(f"input {name!r}: shape must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise InvalidTensor(f"input {name!r}: shape {list(shape)} has a negative dimension")
    return tuple(shape)


def model_input(request: InferRequest, spec: ModelSpec, *, max_images: int) -> ModelInput:
    """The one input the model takes, checked: BYTES [N] (or [N, 1]) encoded images, or FP32 [N, C, H, W]."""
    if len(request.inputs) != 1:
        raise InvalidTensor(f"the model takes exactly one input, {spec.input_name!r}; the request has "
                            f"{len(request.inputs)}")
    tensor = request.inputs[0]
    if tensor.name != spec.input_name:
        raise InvalidTensor(f"unknown input {tensor.name!r}; the model's input is {spec.input_name!r}")
    shape = _shape(tensor.shape, tensor.name)
    if tensor.datatype == BYTES:
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise InvalidTensor(f"input {tensor.name!r}: BYTES (encoded images) take shape [N] or [N, 1], got "
                                f"{list(shape)}")
        count = shape[0]
        _check_count(count, max_images)
        images = _bytes_elements(tensor, count)
        return ModelInput(images=images)
    if tensor.datatype == FP32:
        expected = (spec.channels, spec.crop_size, spec.crop_size)
        if len(shape) != 4 or shape[1:] != expected:
            raise InvalidTensor(f"input {tensor.name!r}: FP32 data must have shape [N, {', '.join(map(str, expected))}] "
                                f"(preprocessed NCHW), got {list(shape)}")
        _check_count(shape[0], max_images)
        return ModelInput(batch=_fp32_batch(tensor, shape))
    raise InvalidTensor(f"input {tensor.name!r}: datatype {tensor.datatype!r} is not supported; send BYTES (encoded "
                        f"JPEG/PNG images) or FP32 (preprocessed [N, C, H, W])")


def _check_count(count: int, max_images: int) -> None:
    if count < 1:
        raise InvalidParameter("the request carries no image (its batch dimension is 0)")
    if count > max_images:
        raise TooManyFiles(f"{count} images in one request; the limit is {max_images}")


def _bytes_elements(tensor: InputTensor, count: int) -> list[bytes]:
    if tensor.raw is not None:
        return split_bytes_elements(tensor.raw, count, tensor.name)
    values = tensor.values
    if not isinstance(values, list) or len(values) != count:
        raise InvalidTensor(f"input {tensor.name!r}: BYTES data must be a list of {count} elements")
    return [element_bytes(value, tensor.name) for value in values]


def element_bytes(value: Any, name: str) -> bytes:
    """One BYTES element given as a value: bytes (gRPC contents) or a base64 string (REST JSON)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidTensor(f"input {name!r}: a BYTES element in JSON must be a base64 string (or send the "
                                f"images as binary data)") from None
    raise InvalidTensor(f"input {name!r}: BYTES elements must be strings, got {type(value).__name__}")


def split_bytes_elements(raw: memoryview | bytes, count: int, name: str) -> list[bytes]:
    """`count` length-prefixed elements that must fill `raw` exactly."""
    view = memoryview(raw)
    elements: list[bytes] = []
    offset = 0
    for index in range(count):
        if offset + 4 > len(view):
            raise InvalidTensor(f"input {name!r}: the binary data ends before element {index}'s length prefix "
                                f"({len(view)} bytes for {count} elements)")
        (length,) = _LENGTH_PREFIX.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidTensor(f"input {name!r}: element {index} declares {length} bytes but only "
                                f"{len(view) - offset} remain")
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise InvalidTensor(f"input {name!r}: {len(view) - offset} bytes follow the {count} elements of shape "
                            f"[{count}]")
    return elements


def _fp32_batch(tensor: InputTensor, shape: tuple[int, ...]) -> np.ndarray:
    size = int(np.prod(shape))
    if tensor.raw is not None:
        if len(tensor.raw) != size * 4:
            raise InvalidTensor(f"input {tensor.name!r}: FP32 shape {list(shape)} needs {size * 4} bytes, the binary "
                                f"data has {len(tensor.raw)}")
        return np.frombuffer(tensor.raw, dtype="<f4").reshape(shape)
    try:
        array = np.asarray(tensor.values, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidTensor(f"input {tensor.name!r}: FP32 data must be numbers") from None
    if array.size != size:
        raise InvalidTensor(f"input {tensor.name!r}: shape {list(shape)} has {size} elements, the data has "
                            f"{array.size}")
    return array.reshape(shape)


def check_json_size(raw: bytes, spec: ModelSpec, max_images: int) -> None:
    """Refuse JSON whose values could not fit the model's largest request, before parsing makes Python objects of
    them (a 32 MiB list of numbers would take several hundred MB)."""
    allowed = max_images * spec.channels * spec.crop_size * spec.crop_size + 4096
    if raw.count(b",") > allowed:
        raise UploadTooLarge(f"the JSON holds more values than the model's largest request ({allowed}); send "
                             f"tensors as binary data")


def logits_output(name: str, logits: np.ndarray) -> OutputTensor:
    return OutputTensor(name, FP32, tuple(logits.shape), array=logits.astype(np.float32, copy=False))


def classification_output(name: str, ranked: list[list[ScoredLabel]]) -> OutputTensor:
    """The classification extension: per image, "<score>:<index>:<label>" for the top k, highest first; the score
    is the softmax probability (Triton writes the raw logit)."""
    k = len(ranked[0]) if ranked else 0
    strings = [f"{label.score:f}:{label.index}:{label.label}".encode() for row in ranked for label in row]
    return OutputTensor(name, BYTES, (len(ranked), k), strings=strings)


def requested_outputs(request: InferRequest, spec: ModelSpec, model_name: str) -> list[RequestedOutput]:
    """The outputs to send: those requested (each must be the model's output, asking for at most as many classes as
    it has), or the model's one output."""
    if request.outputs is None:
        return [RequestedOutput(spec.output_name)]
    for output in request.outputs:
        if output.name != spec.output_name:
            raise InvalidTensor(f"unknown output {output.name!r}; the model's output is {spec.output_name!r}")
        if output.classification is not None and not 1 <= output.classification <= spec.num_classes:
            raise InvalidParameter(f"classification must be between 1 and {spec.num_classes} (the number of classes "
                                   f"of model {model_name}), got {output.classification}")
    return list(request.outputs)
