"""Hypothesis strategies for Open Inference Protocol requests: valid-but-extreme and malformed, in the three wire
forms the server reads (V2 JSON, V2 JSON header + binary tensors, gRPC ModelInferRequest)."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from hypothesis import strategies as st

from service.grpc.proto import grpc_predict_v2_pb2 as pb

MODEL = "fashion-mnist-resnet20"
IMAGE_VALUES = 28 * 28

extreme_floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from([0.0, -0.0, 3.4028235e38, -3.4028235e38, 1.17549435e-38, 7.017038286703837e36, 1e-45]),
)
"""Finite float32 values, the edges of the range included: valid data, however extreme."""

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**60), max_value=10**60),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
"""Any JSON value, shallow: what a confused client puts where a number, a shape or a name belongs."""

shapes = st.one_of(
    st.just([1, 1, 28, 28]),
    st.lists(st.integers(min_value=-3, max_value=2**40), max_size=5),
    json_values,
)
datatypes = st.one_of(st.sampled_from(["FP32", "BYTES", "INT64", "FP16", "", "fp32"]), json_values)


@st.composite
def fp32_json_data(draw: st.DrawFn) -> Any:
    """FP32 data as JSON values: a valid flat or nested image (extreme values included), or wrong in one way."""
    choice = draw(st.integers(0, 4))
    values = draw(st.lists(extreme_floats, min_size=IMAGE_VALUES, max_size=IMAGE_VALUES))
    if choice == 0:
        return values
    if choice == 1:
        return np.asarray(values, dtype=np.float64).reshape(1, 1, 28, 28).tolist()
    if choice == 2:  # one value of another JSON type
        index = draw(st.integers(0, IMAGE_VALUES - 1))
        values[index] = draw(
            json_values.filter(lambda value: not isinstance(value, (int, float)) or isinstance(value, bool))
        )
        return values
    if choice == 3:  # a wrong count
        return values[: draw(st.integers(0, IMAGE_VALUES - 1))]
    return draw(json_values)


@st.composite
def v2_json_bodies(draw: st.DrawFn) -> bytes:
    """A V2 JSON inference request, valid or not, as bytes (sometimes not even JSON)."""
    tensor: dict[str, Any] = {
        "name": draw(st.one_of(st.just("input"), json_values)),
        "datatype": draw(datatypes),
        "shape": draw(shapes),
    }
    if draw(st.booleans()):
        tensor["data"] = draw(fp32_json_data())
    elif draw(st.booleans()):
        tensor["data"] = draw(st.lists(st.one_of(st.text(max_size=40), json_values), max_size=3))
    body: dict[str, Any] = {"inputs": draw(st.one_of(st.just([tensor]), st.lists(json_values, max_size=3)))}
    if draw(st.booleans()):
        body["outputs"] = draw(
            st.one_of(
                st.just([{"name": "logits", "parameters": {"classification": draw(json_values)}}]),
                st.just([{"name": "logits", "parameters": {"binary_data": False}}]),
                json_values,
            )
        )
    if draw(st.booleans()):
        body["parameters"] = draw(
            st.dictionaries(st.sampled_from(["timeout", "priority", "binary_data_output"]), json_values)
        )
    if draw(st.booleans()):
        body["id"] = draw(json_values)
    text = json.dumps(body).encode()
    mangle = draw(st.integers(0, 5))
    if mangle == 0:  # cut short
        return text[: draw(st.integers(0, len(text)))]
    if mangle == 1:  # deep nesting where a value belongs
        depth = draw(st.integers(1, 4000))
        return b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"
    if mangle == 2:  # a huge integer
        return b'{"inputs": [], "id": ' + b"9" * draw(st.integers(1, 20000)) + b"}"
    if mangle == 3:  # tokens that are not JSON
        return text.replace(b"0.", draw(st.sampled_from([b"NaN, 0.", b"Infinity, 0.", b"-Infinity, 0."])), 1)
    return text


@st.composite
def v2_binary_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A JSON header followed by binary tensor data, with sizes that add up or not."""
    datatype = draw(st.sampled_from(["FP32", "BYTES"]))
    if datatype == "FP32":
        count = draw(st.integers(0, 3))
        raw = np.asarray(
            draw(st.lists(st.floats(width=32), min_size=count * IMAGE_VALUES, max_size=count * IMAGE_VALUES)),
            dtype="<f4",
        ).tobytes()
        shape: Any = [count, 1, 28, 28]
    else:
        elements = draw(st.lists(st.binary(max_size=64), max_size=4))
        raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
        shape = [len(elements)]
    if draw(st.booleans()):
        shape = draw(shapes)
    declared = len(raw) + draw(st.sampled_from([0, 0, 0, -1, 1, -(2**31), 2**40]))
    header = json.dumps(
        {
            "inputs": [
                {"name": "input", "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": declared}}
            ]
        }
    ).encode()
    trailing = draw(st.binary(max_size=16)) if draw(st.integers(0, 4)) == 0 else b""
    header_length = len(header) + draw(st.sampled_from([0, 0, 0, -1, 1, 10**12]))
    return header + raw + trailing, {"Inference-Header-Content-Length": str(header_length)}


@st.composite
def grpc_infer_requests(draw: st.DrawFn) -> bytes:
    """A serialized ModelInferRequest, valid or extreme, or bytes that are not one at all."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=256))
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=draw(st.sampled_from(["input", "", "other"])),
        datatype=draw(st.sampled_from(["FP32", "BYTES", "INT8", ""])),
        shape=draw(st.lists(st.integers(-(2**62), 2**62), max_size=5)),
    )
    request = pb.ModelInferRequest(model_name=draw(st.sampled_from([MODEL, "", "missing"])), inputs=[tensor])
    choice = draw(st.integers(0, 3))
    if choice == 0:
        tensor.shape[:] = [1, 1, 28, 28]
        tensor.datatype = "FP32"
        values = draw(st.lists(st.floats(width=32), min_size=IMAGE_VALUES, max_size=IMAGE_VALUES))
        request.raw_input_contents.append(np.asarray(values, dtype="<f4").tobytes())
    elif choice == 1:
        tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=IMAGE_VALUES + 2)))
    elif choice == 2:
        tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=32), max_size=3)))
    else:
        request.raw_input_contents.extend(draw(st.lists(st.binary(max_size=64), max_size=3)))
    if draw(st.booleans()):
        output = request.outputs.add(name=draw(st.sampled_from(["logits", "x"])))
        output.parameters["classification"].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
    if draw(st.booleans()):
        request.parameters["timeout"].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
    return request.SerializeToString()
