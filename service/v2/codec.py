"""The Open Inference Protocol's tensors, without the transport: pure functions shared by the REST and gRPC front
ends. Each front end's message module turns its wire form into `InputTensor`s; `model_inputs` turns those into
the data plane's protocol-neutral inputs (encoded images, or an FP32 batch), counting the images into the
request's admission before anything is allocated for them; `output_tensors` turns the data plane's result back
into `OutputTensor`s (logits, or the classification extension's strings). Checks against the model itself (its
input and output names, its input shape, its number of classes) are the data plane's, made once for every
protocol.

Binary tensors follow Triton's binary tensor data extension: BYTES elements each carry a 4-byte little-endian
length prefix; FP32 data is little-endian, row-major. Every malformed size, shape or datatype is an
`InvalidTensor` (400) whose message says what was wrong; nothing here allocates more than the request's own data,
except the Python values of JSON data, which `check_json_size` bounds first. FP32 data must be numbers (not
strings, booleans or objects) and finite within float32's range, in every wire form: NaN, infinities and values
that overflow float32 are refused, so that no answer ever carries a value JSON cannot write.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from service.errors import InvalidParameter, InvalidTensor, UploadTooLarge
from service.inference import EncodedImages, InferenceResult, ModelInputs, RequestParameters, TensorBatch
from service.postprocess import ScoredLabel
from service.preprocess import ImageUpload

SERVER_NAME = "resnet-serve"
EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "model_repository", "statistics")
"""What server metadata lists, over HTTP and gRPC alike (Triton's clients read the same list from either)."""
PLATFORM = "onnxruntime_onnx"
BYTES = "BYTES"
FP32 = "FP32"
CLASSIFICATION = "classification"
"""The output parameter of the classification extension."""
_LENGTH_PREFIX = struct.Struct("<I")
_MICROSECONDS = 1_000_000


class ImageCounter(Protocol):
    """Where a request's images are counted (its admission `Ticket`); refuses a request with too many."""

    def count_images(self, total: int) -> None: ...


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
        """The JSON form, flattened row-major as the protocol writes `data`. A value JSON cannot write (NaN or an
        infinity, which a model can still produce from finite input) is written as null, as JavaScript's
        JSON.stringify does; tritonclient reads null back as NaN."""
        if self.array is not None:
            flat = self.array.reshape(-1)
            values: list[Any] = flat.tolist()
            if not np.isfinite(flat).all():
                values = [value if math.isfinite(value) else None for value in values]
            return values
        return [s.decode("utf-8") for s in self.strings]


def input_shape(channels: int, height: int, width: int) -> list[int]:
    """A model's FP32 input as the protocol describes it: [-1, C, H, W]."""
    return [-1, channels, height, width]


def _shape(shape: Sequence[int], name: str) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidTensor(f"input {name!r}: shape must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise InvalidTensor(f"input {name!r}: shape {list(shape)} has a negative dimension")
    return tuple(shape)


def model_inputs(tensors: Sequence[InputTensor], counter: ImageCounter) -> ModelInputs:
    """The request's one input: BYTES [N] (or [N, 1]) encoded images, or FP32 [N, ...] preprocessed data; its N
    images are counted into `counter` before any of their data is copied."""
    if len(tensors) != 1:
        raise InvalidTensor(f"the model takes exactly one input; the request has {len(tensors)}")
    tensor = tensors[0]
    shape = _shape(tensor.shape, tensor.name)
    if tensor.datatype == BYTES:
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise InvalidTensor(
                f"input {tensor.name!r}: BYTES (encoded images) take shape [N] or [N, 1], got {list(shape)}"
            )
        counter.count_images(shape[0])
        return EncodedImages([ImageUpload(data) for data in _bytes_elements(tensor, shape[0])], tensor.name)
    if tensor.datatype == FP32:
        if len(shape) != 4:
            raise InvalidTensor(
                f"input {tensor.name!r}: FP32 data must have shape [N, C, H, W] (preprocessed NCHW), got {list(shape)}"
            )
        counter.count_images(shape[0])
        return TensorBatch(_fp32_batch(tensor, shape), tensor.name)
    raise InvalidTensor(
        f"input {tensor.name!r}: datatype {tensor.datatype!r} is not supported; send BYTES (encoded "
        f"JPEG/PNG images) or FP32 (preprocessed [N, C, H, W])"
    )


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
            raise InvalidTensor(
                f"input {name!r}: a BYTES element in JSON must be a base64 string (or send the images as binary data)"
            ) from None
    raise InvalidTensor(f"input {name!r}: BYTES elements must be strings, got {type(value).__name__}")


def split_bytes_elements(raw: memoryview | bytes, count: int, name: str) -> list[bytes]:
    """`count` length-prefixed elements that must fill `raw` exactly."""
    view = memoryview(raw)
    elements: list[bytes] = []
    offset = 0
    for index in range(count):
        if offset + 4 > len(view):
            raise InvalidTensor(
                f"input {name!r}: the binary data ends before element {index}'s length prefix "
                f"({len(view)} bytes for {count} elements)"
            )
        (length,) = _LENGTH_PREFIX.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidTensor(
                f"input {name!r}: element {index} declares {length} bytes but only {len(view) - offset} remain"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise InvalidTensor(
            f"input {name!r}: {len(view) - offset} bytes follow the {count} elements of shape [{count}]"
        )
    return elements


def _fp32_batch(tensor: InputTensor, shape: tuple[int, ...]) -> np.ndarray:
    size = int(np.prod(shape, dtype=object))
    if tensor.raw is not None:
        if len(tensor.raw) != size * 4:
            raise InvalidTensor(
                f"input {tensor.name!r}: FP32 shape {list(shape)} needs {size * 4} bytes, the binary "
                f"data has {len(tensor.raw)}"
            )
        array = np.frombuffer(tensor.raw, dtype="<f4").reshape(shape)
    else:
        array = _fp32_values(tensor.values, tensor.name)
        if array.size != size:
            raise InvalidTensor(
                f"input {tensor.name!r}: shape {list(shape)} has {size} elements, the data has {array.size}"
            )
        array = array.reshape(shape)
    if not np.isfinite(array).all():
        raise InvalidTensor(
            f"input {tensor.name!r}: FP32 data must be finite numbers within float32's range (about ±3.4e38); "
            f"NaN, infinities and larger values are refused"
        )
    return array


_NUMBER_KINDS = frozenset("iuf")


def _fp32_values(values: Any, name: str) -> np.ndarray:
    """FP32 data given as values: numbers only (numpy would turn the strings "0.5" or "nan", and booleans, into
    floats without a word), in a flat list or lists nested as the shape; float32, possibly with infinities where
    a value overflowed, which the caller refuses."""
    not_numbers = InvalidTensor(
        f"input {name!r}: FP32 data must be numbers, in a flat list or in lists nested as the shape "
        f"(not strings, booleans, objects or lists of uneven length)"
    )
    if not isinstance(values, (list, np.ndarray)) or _holds_booleans(values):
        raise not_numbers
    try:
        array = np.asarray(values)
        if array.dtype.kind == "O":  # integers beyond 64 bits; anything else here is not a number
            array = array.astype(np.float64)
    except (TypeError, ValueError, OverflowError):
        raise not_numbers from None
    if array.dtype.kind not in _NUMBER_KINDS:
        raise not_numbers
    with np.errstate(over="ignore"):  # an overflow becomes an infinity, refused as such
        return array.astype(np.float32, copy=False)


def _holds_booleans(values: Any) -> bool:
    """JSON true/false among the values (numpy reads them as 1 and 0)."""
    if isinstance(values, np.ndarray):
        return bool(values.dtype.kind == "b")
    pending = [values]
    while pending:
        current = pending.pop()
        for value in current:
            if type(value) is list:
                pending.append(value)
            elif type(value) is bool:
                return True
    return False


def check_json_size(raw: bytes | memoryview, max_values: int) -> None:
    """Refuse JSON that holds more values than the model's largest request (`Ticket.max_input_values`), before
    parsing makes Python objects of them (a 32 MiB list of numbers would take several hundred MB)."""
    if bytes(raw).count(b",") > max_values:
        raise UploadTooLarge(
            f"the JSON holds more values than the model's largest request ({max_values}); send tensors as binary data"
        )


def classification_k(value: object, where: str) -> int:
    """The classification extension's k, as given: an integer (1 to the classes is the data plane's check)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidParameter(f"{where}.classification must be an integer, got {value!r}")
    return value


def request_parameters(parameters: Mapping[str, object]) -> RequestParameters:
    """The request parameters that matter to serving, as Triton names them: ``timeout`` in microseconds (it can
    only shorten the server's own request timeout) and ``priority`` (1 highest, 0 the default). Others are
    ignored, as Triton ignores parameters it does not know."""
    timeout = parameters.get("timeout")
    priority = parameters.get("priority")
    for name, value in (("timeout", timeout), ("priority", priority)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise InvalidParameter(f"parameters.{name} must be a non-negative integer, got {value!r}")
    return RequestParameters(
        timeout_s=timeout / _MICROSECONDS if isinstance(timeout, int) and timeout > 0 else None,
        priority=priority if isinstance(priority, int) and priority > 0 else None,
    )


def output_tensors(result: InferenceResult) -> list[OutputTensor]:
    """The result's outputs as the protocol sends them: FP32 logits, or the classification extension's strings."""
    tensors: list[OutputTensor] = []
    for output in result.outputs:
        if output.ranked is not None:
            tensors.append(_classification(output.name, output.ranked))
        elif output.logits is not None:
            array = output.logits.astype(np.float32, copy=False)
            tensors.append(OutputTensor(output.name, FP32, tuple(output.logits.shape), array=array))
    return tensors


def _classification(name: str, ranked: list[list[ScoredLabel]]) -> OutputTensor:
    """Per image, "<score>:<index>:<label>" for the top k, highest first; the score is the softmax probability
    (Triton writes the raw logit)."""
    k = len(ranked[0]) if ranked else 0
    strings = [f"{label.score:f}:{label.index}:{label.label}".encode() for row in ranked for label in row]
    return OutputTensor(name, BYTES, (len(ranked), k), strings=strings)
