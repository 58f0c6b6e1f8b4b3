"""The Open Inference Protocol's REST messages, to and from the data plane's protocol-neutral types: the twin of
`service.grpc.messages`.

`V2HttpBody` is the request body reader the data plane calls (`inference.RequestBody`): it receives the body
within the upload limits (`api.uploads`), then `parse_request` cuts the JSON header and each input's binary data
out of it, and the codec turns the inputs into encoded images or an FP32 batch, counted into the admission.
`encode_response` writes the result back as JSON, or JSON followed by binary tensors (Triton's binary tensor
data extension), as each output asked.

The JSON is parsed within `JsonLimits`: nesting deeper than `max_depth` is refused before parsing (the parser
recurses, and a few kilobytes of brackets would exhaust Python's stack), an integer longer than
`max_integer_digits` as the parser meets it (Python's own limit, 4,300 digits, raises a plain ValueError and costs
quadratic time below it), and NaN or Infinity, which are not JSON, outright. Each is a 400 that says which.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.requests import Request

from service.api.disconnect import client_gone
from service.api.uploads import UploadLimits, receive_body
from service.errors import InvalidTensor, MalformedRequest
from service.inference import Admit, InferenceResult, ReceivedBody, RequestedOutput, RequestParameters
from service.v2 import codec
from service.v2.codec import InputTensor

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class JsonLimits:
    """What a V2 JSON header may cost to parse (settings `max_json_depth`, `max_json_integer_digits`)."""

    max_depth: int = 32
    max_integer_digits: int = 40


_OPENERS = (b"[", b"{")
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'[]{}"')
_STRING_SKELETON = re.compile(rb'"[^"]*"')
_DEPTH_CHUNK = 1 << 20


def json_depth_exceeds(raw: bytes, limit: int) -> bool:
    """Whether JSON text nests arrays and objects deeper than `limit`, found without parsing it (brackets inside
    strings do not count). Linear in C: escapes and every byte but brackets and quotes are dropped, the strings
    left are cut out, and the running depth of what remains is summed in chunks."""
    if sum(raw.count(opener) for opener in _OPENERS) <= limit:
        return False  # too few brackets to nest deeper, whatever they are
    skeleton = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    skeleton = _STRING_SKELETON.sub(b"", skeleton).replace(b'"', b"")
    brackets = np.frombuffer(skeleton, dtype=np.uint8)
    depth = 0
    for start in range(0, len(brackets), _DEPTH_CHUNK):
        part = brackets[start : start + _DEPTH_CHUNK]
        steps = ((part == ord("[")) | (part == ord("{"))).astype(np.int32) * 2 - 1
        running = np.cumsum(steps) + depth
        if int(running.max()) > limit:
            return True
        depth = int(running[-1])
    return False


def _not_json_number(constant: str) -> float:
    raise InvalidTensor(f"{constant} is not a JSON number; FP32 data must be finite numbers")


def load_json(raw: bytes, limits: JsonLimits) -> Any:
    """JSON text parsed within `limits`; MalformedRequest or InvalidTensor (400) naming what was wrong."""
    if json_depth_exceeds(raw, limits.max_depth):
        raise MalformedRequest(f"the JSON nests arrays and objects more than {limits.max_depth} levels deep")

    def integer(text: str) -> int:
        if len(text) - text.startswith("-") > limits.max_integer_digits:
            raise InvalidTensor(
                f"the JSON has an integer of {len(text)} characters; at most {limits.max_integer_digits} digits "
                f"are accepted"
            )
        return int(text)

    try:
        return json.loads(raw, parse_int=integer, parse_constant=_not_json_number)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRequest(f"the inference request is not valid JSON ({exc})") from None
    except (RecursionError, ValueError) as exc:  # a guard: the checks above leave Python nothing to refuse
        raise MalformedRequest(f"the inference request's JSON cannot be read ({type(exc).__name__})") from None


@dataclass(frozen=True)
class WantedOutput:
    output: RequestedOutput
    binary: bool | None = None
    """None: the request's default (`binary_data_output`)."""


@dataclass(frozen=True)
class V2HttpRequest:
    """An inference request as the REST body carried it."""

    id: str | None
    inputs: list[InputTensor]
    outputs: list[WantedOutput] | None
    """None: every output of the model, in the request's default form."""
    binary_output: bool = False
    parameters: RequestParameters = field(default_factory=RequestParameters)


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidTensor(f"{what} must be a JSON object")
    return value


def header_length(request: Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidTensor(f"{HEADER_LENGTH} must be an integer, got {raw!r}") from None


def parse_request(body: bytes, header_length: int | None, json_limits: JsonLimits | None = None) -> V2HttpRequest:
    """A REST inference request: the JSON header, and each input's binary data cut out of what follows it."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise InvalidTensor(f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes")
    header_bytes = body if header_length is None else bytes(memoryview(body)[:header_length])
    header = load_json(header_bytes, json_limits or JsonLimits())
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidTensor("the inference request must be a JSON object with a list of 'inputs'")
    binary = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    offset = 0
    inputs = []
    for index, item in enumerate(header["inputs"]):
        item = _object(item, f"inputs[{index}]")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list):
            raise InvalidTensor(f"inputs[{index}] needs a 'name', a 'datatype' and a 'shape'")
        size = _object(item.get("parameters"), f"inputs[{index}].parameters").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidTensor(
                    f"input {name!r}: binary_data_size {size!r} does not fit the {len(binary) - offset} "
                    f"binary bytes left in the body"
                )
            inputs.append(InputTensor(name, datatype, tuple(shape), raw=binary[offset : offset + size]))
            offset += size
        elif "data" in item:
            inputs.append(InputTensor(name, datatype, tuple(shape), values=item["data"]))
        else:
            raise InvalidTensor(f"input {name!r} has neither 'data' nor a binary_data_size")
    if offset != len(binary):
        raise InvalidTensor(f"the binary data sizes add up to {offset} bytes but {len(binary)} follow the JSON header")
    parameters = _object(header.get("parameters"), "parameters")
    outputs = None
    if header.get("outputs") is not None:
        if not isinstance(header["outputs"], list):
            raise InvalidTensor("'outputs' must be a list")
        outputs = [_wanted_output(index, item) for index, item in enumerate(header["outputs"])]
    request_id = header.get("id")
    return V2HttpRequest(
        id=None if request_id is None else str(request_id),
        inputs=inputs,
        outputs=outputs,
        binary_output=bool(parameters.get("binary_data_output", False)),
        parameters=codec.request_parameters(parameters),
    )


def _wanted_output(index: int, item: Any) -> WantedOutput:
    item = _object(item, f"outputs[{index}]")
    parameters = _object(item.get("parameters"), f"outputs[{index}].parameters")
    k = parameters.get(codec.CLASSIFICATION)
    name = item.get("name")
    output = RequestedOutput(
        None if name is None else str(name),
        ranked=k is not None,
        k=None if k is None else codec.classification_k(k, f"outputs[{index}].parameters"),
        asked_as=codec.CLASSIFICATION,
    )
    binary = parameters.get("binary_data")
    return WantedOutput(output, None if binary is None else bool(binary))


class V2HttpBody:
    """Receives a REST inference request's body for the data plane; keeps what the answer must be encoded as."""

    def __init__(self, request: Request, limits: UploadLimits, json_limits: JsonLimits | None = None) -> None:
        self._request = request
        self._limits = limits
        self._json_limits = json_limits or JsonLimits()
        self.parsed: V2HttpRequest | None = None

    async def receive(self, admit: Admit) -> ReceivedBody:
        request = self._request
        length = header_length(request)
        ticket, body = await receive_body(request, self._limits, admit, protocol="v2-http")
        codec.check_json_size(body if length is None else memoryview(body)[:length], ticket.max_input_values)
        parsed = self.parsed = parse_request(body, length, self._json_limits)
        inputs = codec.model_inputs(parsed.inputs, ticket)
        request.state.images = len(inputs)
        outputs = None if parsed.outputs is None else [wanted.output for wanted in parsed.outputs]
        return ReceivedBody(
            inputs,
            outputs=outputs,
            request_id=parsed.id,
            parameters=parsed.parameters,
            client_gone=client_gone(request),
        )


def encode_response(result: InferenceResult, parsed: V2HttpRequest, request_id: str) -> tuple[bytes, int | None]:
    """The response body and, when binary tensors follow the JSON, the JSON's length. A request that gave no `id`
    of its own is answered with the server's request ID, so that a client can trace it."""
    wanted = parsed.outputs or [WantedOutput(RequestedOutput())]
    described = []
    binary_parts = []
    for choice, tensor in zip(wanted, codec.output_tensors(result), strict=True):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if parsed.binary_output if choice.binary is None else choice.binary:
            raw = tensor.raw()
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary_parts.append(raw)
        else:
            entry["data"] = tensor.values()
        described.append(entry)
    header: dict[str, Any] = {
        "model_name": result.model,
        "model_version": result.version,
        "outputs": described,
        "id": result.request_id or request_id,
    }
    # allow_nan=False: the codec writes non-finite values as null; anything else that slipped through fails here
    # rather than leaving as a bare NaN token no JSON parser reads.
    header_bytes = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if not binary_parts:
        return header_bytes, None
    return b"".join([header_bytes, *binary_parts]), len(header_bytes)
