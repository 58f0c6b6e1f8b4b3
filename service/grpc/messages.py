"""The gRPC messages of the Open Inference Protocol, to and from the codec's protocol-neutral tensors.

Pure functions: a `ModelInferRequest` becomes a `codec.InferRequest` (each input's data from
``raw_input_contents`` or from its typed ``contents``), and outputs go back as a `ModelInferResponse` whose data
is always in ``raw_output_contents``, as Triton answers. Checks that the codec makes for every protocol
(shapes, sizes, datatypes, names) stay in the codec.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.errors import InvalidParameter, InvalidTensor
from service.grpc.proto import grpc_predict_v2_pb2 as pb
from service.modelspec import ModelSpec
from service.v2 import codec
from service.v2.codec import InferRequest, InputTensor, OutputTensor, RequestedOutput

MODEL_VERSION = "1"
"""Every model has one version (as over HTTP)."""
PLATFORM = "onnxruntime_onnx"
CLASSIFICATION = "classification"
_SHARED_MEMORY = "shared_memory_region"


def infer_request(message: pb.ModelInferRequest) -> InferRequest:
    """The request's inputs and requested outputs, as the codec takes them."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidTensor(f"the request has {len(raw)} raw_input_contents for {len(message.inputs)} input(s); send "
                            f"every input's data there, in the order of the inputs, or none")
    inputs = []
    for index, tensor in enumerate(message.inputs):
        if _SHARED_MEMORY in tensor.parameters:
            raise InvalidParameter(f"input {tensor.name!r}: shared memory is not supported; send the data in the "
                                   f"request")
        shape = tuple(tensor.shape)
        if raw:
            inputs.append(InputTensor(tensor.name, tensor.datatype, shape, raw=raw[index]))
        else:
            inputs.append(InputTensor(tensor.name, tensor.datatype, shape, values=_contents(tensor)))
    outputs = None
    if message.outputs:
        outputs = [_requested_output(index, output) for index, output in enumerate(message.outputs)]
    return InferRequest(id=message.id or None, inputs=inputs, outputs=outputs)


def _contents(tensor: pb.ModelInferRequest.InferInputTensor) -> object:
    """The typed values of the datatypes the model takes (the codec refuses any other datatype)."""
    if tensor.datatype == codec.BYTES:
        return list(tensor.contents.bytes_contents)
    if tensor.datatype == codec.FP32:
        values = tensor.contents.fp32_contents
        return np.fromiter(values, dtype=np.float32, count=len(values))
    return None


def _requested_output(index: int, output: pb.ModelInferRequest.InferRequestedOutputTensor) -> RequestedOutput:
    if _SHARED_MEMORY in output.parameters:
        raise InvalidParameter(f"output {output.name!r}: shared memory is not supported; the output is sent in the "
                               f"response")
    k = None
    if CLASSIFICATION in output.parameters:
        parameter = output.parameters[CLASSIFICATION]
        choice = parameter.WhichOneof("parameter_choice")
        if choice not in ("int64_param", "uint64_param"):
            value = getattr(parameter, choice) if choice else None
            raise InvalidParameter(f"outputs[{index}].parameters.classification must be an integer, got {value!r}")
        k = getattr(parameter, choice)
    return RequestedOutput(output.name, binary=True, classification=k)


def infer_response(model_name: str, request_id: str | None, outputs: Sequence[OutputTensor]) -> pb.ModelInferResponse:
    return pb.ModelInferResponse(
        model_name=model_name,
        model_version=MODEL_VERSION,
        id=request_id or "",
        outputs=[pb.ModelInferResponse.InferOutputTensor(name=tensor.name, datatype=tensor.datatype,
                                                         shape=list(tensor.shape)) for tensor in outputs],
        raw_output_contents=[tensor.raw() for tensor in outputs],
    )


def model_metadata(name: str, spec: ModelSpec) -> pb.ModelMetadataResponse:
    """What GET /v2/models/{name} describes, in the fields the gRPC message has (it has no parameters)."""
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=name,
        versions=[MODEL_VERSION],
        platform=PLATFORM,
        inputs=[tensor(name=spec.input_name, datatype=codec.FP32, shape=codec.input_shape(spec))],
        outputs=[tensor(name=spec.output_name, datatype=codec.FP32, shape=[-1, spec.num_classes])],
    )
