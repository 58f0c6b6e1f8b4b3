"""The gRPC messages of the Open Inference Protocol, to and from the data plane's protocol-neutral types: the twin
of `service.api.v2_messages`.

`GrpcBody` is the request body reader the data plane calls (`inference.RequestBody`): the message is whole
already, so it admits with the message's size, `infer_request` turns its inputs (from ``raw_input_contents`` or
the typed ``contents``) into `codec.InputTensor`s, and the codec counts and converts them. The answer goes back as a
`ModelInferResponse` whose data is always in ``raw_output_contents``, as Triton answers.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from service.contract import ModelDescription, VersionStatus
from service.errors import InvalidParameter, InvalidTensor
from service.grpc.proto import grpc_predict_v2_pb2 as pb
from service.inference import Admit, InferenceResult, ReceivedBody, RequestedOutput, RequestParameters
from service.v2 import codec
from service.v2.codec import InputTensor

SERVICE_NAME = "inference.GRPCInferenceService"
SERVED_BY: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("grpc_served_by", default=None)
"""The model and version a call was admitted to, for its access line (set in the call's own task)."""
_SHARED_MEMORY = "shared_memory_region"


@dataclass(frozen=True)
class GrpcInferRequest:
    """A ModelInferRequest's content, as the codec and the data plane take it."""

    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None
    """None: the model's output, as logits."""
    parameters: RequestParameters


def infer_request(message: pb.ModelInferRequest) -> GrpcInferRequest:
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidTensor(
            f"the request has {len(raw)} raw_input_contents for {len(message.inputs)} input(s); "
            f"send every input's data there, in the order of the inputs, or none"
        )
    inputs = [_input_tensor(tensor, raw[index] if raw else None) for index, tensor in enumerate(message.inputs)]
    outputs = [_requested_output(index, output) for index, output in enumerate(message.outputs)] or None
    return GrpcInferRequest(
        id=message.id or None,
        inputs=inputs,
        outputs=outputs,
        parameters=codec.request_parameters(_values(message.parameters)),
    )


class GrpcBody:
    """A ModelInferRequest, received for the data plane."""

    def __init__(self, message: pb.ModelInferRequest) -> None:
        self._message = message

    async def receive(self, admit: Admit) -> ReceivedBody:
        # The message is whole already (gRPC bounds it by max_upload_bytes); its size still counts in the byte
        # budget shared with HTTP while the request holds it.
        ticket = admit(self._message.ByteSize())
        SERVED_BY.set((ticket.model.name, ticket.model.version))
        parsed = infer_request(self._message)
        return ReceivedBody(
            codec.model_inputs(parsed.inputs, ticket),
            outputs=parsed.outputs,
            request_id=parsed.id,
            parameters=parsed.parameters,
        )


def _input_tensor(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> InputTensor:
    if _SHARED_MEMORY in tensor.parameters:
        raise InvalidParameter(f"input {tensor.name!r}: shared memory is not supported; send the data in the request")
    shape = tuple(tensor.shape)
    if raw is not None:
        return InputTensor(tensor.name, tensor.datatype, shape, raw=raw)
    return InputTensor(tensor.name, tensor.datatype, shape, values=_contents(tensor))


def _contents(tensor: pb.ModelInferRequest.InferInputTensor) -> object:
    """The typed values of the datatypes the model takes (the codec refuses any other datatype)."""
    if tensor.datatype == codec.BYTES:
        return list(tensor.contents.bytes_contents)
    if tensor.datatype == codec.FP32:
        values = tensor.contents.fp32_contents
        return np.fromiter(values, dtype=np.float32, count=len(values))
    return None


def _values(parameters: Mapping[str, pb.InferParameter]) -> dict[str, object]:
    """InferParameter messages as the plain values a JSON body would carry."""
    values: dict[str, object] = {}
    for name, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[name] = getattr(parameter, choice) if choice else None
    return values


def _requested_output(index: int, output: pb.ModelInferRequest.InferRequestedOutputTensor) -> RequestedOutput:
    if _SHARED_MEMORY in output.parameters:
        raise InvalidParameter(
            f"output {output.name!r}: shared memory is not supported; the output is sent in the response"
        )
    k = _values(output.parameters).get(codec.CLASSIFICATION)
    return RequestedOutput(
        output.name,
        ranked=k is not None,
        k=None if k is None else codec.classification_k(k, f"outputs[{index}].parameters"),
        asked_as=codec.CLASSIFICATION,
    )


def infer_response(result: InferenceResult, request_id: str | None) -> pb.ModelInferResponse:
    """The result, every output's data in ``raw_output_contents``; `request_id` answers for a request that gave
    no `id` of its own."""
    outputs = codec.output_tensors(result)
    return pb.ModelInferResponse(
        model_name=result.model,
        model_version=result.version,
        id=result.request_id or request_id or "",
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(
                name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape)
            )
            for tensor in outputs
        ],
        raw_output_contents=[tensor.raw() for tensor in outputs],
    )


def model_metadata(model: ModelDescription) -> pb.ModelMetadataResponse:
    """What GET /v2/models/{name} describes, in the fields the gRPC message has (it has no parameters)."""
    tensor = pb.ModelMetadataResponse.TensorMetadata
    spec = model.spec
    return pb.ModelMetadataResponse(
        name=model.name,
        versions=list(model.versions),
        platform=codec.PLATFORM,
        inputs=[tensor(name=spec.input_name, datatype=codec.FP32, shape=codec.input_shape(*spec.input_shape))],
        outputs=[tensor(name=spec.output_name, datatype=codec.FP32, shape=[-1, spec.num_classes])],
    )


def repository_index(statuses: Sequence[VersionStatus], *, ready_only: bool) -> pb.RepositoryIndexResponse:
    index = pb.RepositoryIndexResponse.ModelIndex
    return pb.RepositoryIndexResponse(
        models=[
            index(name=status.name, version=status.version, state=status.state, reason=status.reason)
            for status in statuses
            if not ready_only or status.state == "READY"
        ]
    )


def load_default_version(request: pb.RepositoryModelLoadRequest) -> int | None:
    """The version to pin, from the `default_version` parameter; file and config parameters are refused, as
    over HTTP (models load from the repository folder only)."""
    for key in request.parameters:
        if key.startswith("file:") or key == "config":
            raise InvalidParameter(
                f"parameter {key!r} is not supported: models load from the server's repository folder only, with "
                f"the configuration found there (publish files into the repository, then load)"
            )
    if "default_version" not in request.parameters:
        return None
    parameter = request.parameters["default_version"]
    choice = parameter.WhichOneof("parameter_choice")
    value = getattr(parameter, choice) if choice else None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidParameter(f"parameters.default_version must be a positive integer, got {value!r}")
    return value
