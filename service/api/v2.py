"""The Open Inference Protocol (KServe V2) over HTTP: the paths Triton's clients call, on the same data plane.

Health, server and model metadata, and inference with JSON or binary tensors (Triton's binary tensor data
extension) and the classification extension. A request sends either encoded images as BYTES [N], decoded and
preprocessed exactly as /v1/classify does, or a preprocessed FP32 [N, C, H, W] batch that goes straight to the
batcher. Errors leave as ``{"error": "<message>"}`` with the same statuses as /v1 (see `api.errors`).
"""

from __future__ import annotations

import gzip
import json
import time
import zlib
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from service import __version__
from service.api.disconnect import unless_client_leaves
from service.api.deps import DataPlaneDep
from service.api.uploads import UploadLimits, check_content_encoding, declared_length, read_body
from service.errors import InvalidParameter, InvalidTensor, MalformedRequest, ModelNotFound
from service.preprocess import ImageUpload
from service.registry import ServedModel
from service.v2 import codec
from service.v2.codec import InferRequest, InputTensor, OutputTensor, RequestedOutput

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

MODEL_VERSION = "1"
EXTENSIONS = ["binary_tensor_data", "classification"]
HEADER_LENGTH = "Inference-Header-Content-Length"

ModelName = Annotated[str, Path(description="Model name (its file stem in the model repository).")]
Version = Annotated[str, Path(description='Model version; every model has one version, "1".')]

_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A JSON inference request, or (with an `Inference-Header-Content-Length` header) that JSON "
        "followed by binary tensors. The input, named as the model's input, is either BYTES of shape [N]: encoded "
        "JPEG/PNG/WebP/GIF/BMP/TIFF images, each with a 4-byte little-endian length prefix in binary form (base64 "
        "strings in JSON); or FP32 of shape [N, C, H, W], preprocessed. `Content-Encoding: gzip` or `deflate` is "
        "accepted.",
        "content": {"application/json": {"schema": {"type": "object"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def _check_version(model: str, version: str | None) -> None:
    if version is not None and version != MODEL_VERSION:
        raise ModelNotFound(f"model {model!r} has no version {version!r}; its only version is {MODEL_VERSION!r}")


# ------------------------------------------------------------------------------------------------ health


@router.get("/health/live", summary="Liveness: 200 while the process serves HTTP")
async def live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready", summary="Readiness: 200 when every model is ready, 400 otherwise")
async def ready(dataplane: DataPlaneDep) -> Response:
    return Response(status_code=200 if dataplane.ready else 400)


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "resnet-serve", "version": __version__, "extensions": EXTENSIONS}


@router.get("/models/{name}/ready", summary="Model readiness: 200 ready, 400 not yet, 404 unknown")
async def model_ready(dataplane: DataPlaneDep, name: ModelName) -> Response:
    return Response(status_code=200 if dataplane.registry.get(name).ready and dataplane.ready else 400)


@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness, for a version")
async def model_version_ready(dataplane: DataPlaneDep, name: ModelName, version: Version) -> Response:
    _check_version(name, version)
    return await model_ready(dataplane, name)


def _metadata(model: ServedModel) -> dict[str, Any]:
    spec = model.spec
    return {
        "name": model.name,
        "versions": [MODEL_VERSION],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": spec.input_name, "datatype": codec.FP32, "shape": codec.input_shape(spec)}],
        "outputs": [{"name": spec.output_name, "datatype": codec.FP32, "shape": [-1, spec.num_classes]}],
        "parameters": {
            "encoded_images": f"the input {spec.input_name!r} also takes BYTES of shape [-1]: encoded JPEG, PNG, "
            f"WebP, GIF, BMP or TIFF images (4-byte little-endian length prefix each in binary form, base64 in "
            f"JSON), decoded and preprocessed by the server",
            "preprocessing": f"{spec.color_mode}, resize {spec.resize_size}, centre crop {spec.crop_size}, "
            f"{spec.interpolation}, mean {spec.mean}, std {spec.std}",
            "classification": "output parameter 'classification': k returns BYTES [N, k] of "
            "'<probability>:<index>:<label>', highest first",
            "labels": list(spec.labels),
        },
    }


@router.get("/models/{name}", summary="Model metadata")
async def model_metadata(dataplane: DataPlaneDep, name: ModelName) -> dict[str, Any]:
    return _metadata(dataplane.registry.get(name))


@router.get("/models/{name}/versions/{version}", summary="Model metadata, for a version")
async def model_version_metadata(dataplane: DataPlaneDep, name: ModelName, version: Version) -> dict[str, Any]:
    _check_version(name, version)
    return _metadata(dataplane.registry.get(name))


# ------------------------------------------------------------------------------------------------ inference


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidTensor(f"{what} must be a JSON object")
    return value


def parse_request(body: bytes, header_length: int | None) -> InferRequest:
    """A REST inference request: the JSON header, and each input's binary data cut out of what follows it."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise InvalidTensor(f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes")
    header_bytes = body if header_length is None else memoryview(body)[:header_length]
    try:
        header = json.loads(bytes(header_bytes))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRequest(f"the inference request is not valid JSON ({exc})") from None
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
                raise InvalidTensor(f"input {name!r}: binary_data_size {size!r} does not fit the {len(binary) - offset} "
                                    f"binary bytes left in the body")
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
        outputs = []
        for index, item in enumerate(header["outputs"]):
            item = _object(item, f"outputs[{index}]")
            output_parameters = _object(item.get("parameters"), f"outputs[{index}].parameters")
            k = output_parameters.get("classification")
            if k is not None and (not isinstance(k, int) or isinstance(k, bool)):
                raise InvalidParameter(f"outputs[{index}].parameters.classification must be an integer, got {k!r}")
            binary_data = output_parameters.get("binary_data")
            outputs.append(RequestedOutput(str(item.get("name")), None if binary_data is None else bool(binary_data),
                                           k))
    request_id = header.get("id")
    return InferRequest(id=None if request_id is None else str(request_id), inputs=inputs, outputs=outputs,
                        binary_output=bool(parameters.get("binary_data_output", False)))


def _header_length(request: Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidTensor(f"{HEADER_LENGTH} must be an integer, got {raw!r}") from None


def encode_response(model: ServedModel, request: InferRequest, outputs: list[tuple[RequestedOutput, OutputTensor]]
                    ) -> tuple[bytes, int | None]:
    """The response body and, when binary tensors follow the JSON, the JSON's length."""
    described = []
    binary_parts = []
    for wanted, tensor in outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        binary = request.binary_output if wanted.binary is None else wanted.binary
        if binary:
            raw = tensor.raw()
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary_parts.append(raw)
        else:
            entry["data"] = tensor.values()
        described.append(entry)
    header: dict[str, Any] = {"model_name": model.name, "model_version": MODEL_VERSION, "outputs": described}
    if request.id is not None:
        header["id"] = request.id
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    if not binary_parts:
        return header_bytes, None
    return b"".join([header_bytes, *binary_parts]), len(header_bytes)


def _compress(body: bytes, request: Request) -> tuple[bytes, dict[str, str]]:
    accepted = request.headers.get("accept-encoding", "").lower()
    if "gzip" in accepted:
        return gzip.compress(body, compresslevel=5), {"Content-Encoding": "gzip"}
    if "deflate" in accepted:
        return zlib.compress(body, 5), {"Content-Encoding": "deflate"}
    return body, {}


async def _infer(request: Request, dataplane: DataPlaneDep, name: str) -> Response:
    received_at = time.monotonic()
    limits = UploadLimits(dataplane.max_upload_bytes, dataplane.max_files_per_request)
    encoding = check_content_encoding(request)
    declared = declared_length(request, limits)
    header_length = _header_length(request)
    with dataplane.admit(name, None, declared_bytes=declared if encoding is None else None, received_at=received_at,
                         protocol="v2-http") as ticket:
        model = ticket.model
        request.state.model, request.state.protocol = model.name, "v2-http"
        body = await read_body(request, limits, ticket, encoding)
        if header_length is None:
            codec.check_json_size(body, model.spec, dataplane.max_files_per_request)
        else:
            codec.check_json_size(body[:header_length], model.spec, dataplane.max_files_per_request)
        inference_request = parse_request(body, header_length)
        wanted = codec.requested_outputs(inference_request, model.spec, model.name)
        given = codec.model_input(inference_request, model.spec, max_images=dataplane.max_files_per_request)
        request.state.images = given.count
        ticket.count_images(given.count)
        if given.images is not None:
            uploads = [ImageUpload(data) for data in given.images]
            logits = (await unless_client_leaves(request, dataplane.infer_images(ticket, uploads))).logits
        else:
            assert given.batch is not None
            logits = (await unless_client_leaves(request, dataplane.infer_tensors(ticket, given.batch))).logits
    tensors = [
        (output, codec.classification_output(output.name, model.postprocess(logits, output.classification))
         if output.classification is not None else codec.logits_output(output.name, logits))
        for output in wanted
    ]
    if inference_request.id is None:
        # The request's ID answers for a request that gave no `id` of its own, so a client can trace it.
        inference_request = replace(inference_request, id=request.state.request_id)
    body, json_length = encode_response(model, inference_request, tensors)
    body, headers = _compress(body, request)
    if json_length is not None:
        headers[HEADER_LENGTH] = str(json_length)
        return Response(body, media_type="application/octet-stream", headers=headers)
    return Response(body, media_type="application/json", headers=headers)


@router.post("/models/{name}/infer", openapi_extra=_INFER_BODY, summary="Inference (Open Inference Protocol)")
async def infer(request: Request, dataplane: DataPlaneDep, name: ModelName) -> Response:
    return await _infer(request, dataplane, name)


@router.post("/models/{name}/versions/{version}/infer", openapi_extra=_INFER_BODY,
             summary="Inference, for a version")
async def infer_version(request: Request, dataplane: DataPlaneDep, name: ModelName, version: Version) -> Response:
    _check_version(name, version)
    return await _infer(request, dataplane, name)
