"""The Open Inference Protocol (KServe V2) over HTTP: the paths Triton's clients call, on the same data plane.

Health, server and model metadata, and inference with JSON or binary tensors (Triton's binary tensor data
extension) and the classification extension. A request sends either encoded images as BYTES [N], decoded and
preprocessed exactly as /v1/classify does, or a preprocessed FP32 [N, C, H, W] batch that goes straight to the
batcher. Errors leave as ``{"error": "<message>"}`` with the same statuses as /v1 (see `api.errors`).
"""

from __future__ import annotations

import gzip
import time
import zlib
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from service import __version__
from service.api.deps import DataPlaneDep, LimitsDep
from service.api.uploads import UploadLimits
from service.api.v2_messages import HEADER_LENGTH, JsonLimits, V2HttpBody, encode_response
from service.config import LimitsSettings
from service.contract import ModelDescription
from service.dataplane import DataPlane
from service.inference import InferenceRequest
from service.v2 import codec, extensions

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

ModelName = Annotated[str, Path(description="Model name (its file stem in the model repository).")]
Version = Annotated[str, Path(description="Model version (a positive integer).")]

_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A JSON inference request, or (with an `Inference-Header-Content-Length` header) that JSON "
        "followed by binary tensors. The input, named as the model's input, is either BYTES of shape [N]: encoded "
        "JPEG/PNG/WebP/GIF/BMP/TIFF images, each with a 4-byte little-endian length prefix in binary form (base64 "
        "strings in JSON); or FP32 of shape [N, C, H, W], preprocessed. `Content-Encoding: gzip` or `deflate` is "
        "accepted.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


# ------------------------------------------------------------------------------------------------ health


@router.get("/health/live", summary="Liveness: 200 while the process serves HTTP")
async def live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready", summary="Readiness: 200 when every model is ready, 400 otherwise")
async def ready(dataplane: DataPlaneDep) -> Response:
    return Response(status_code=200 if dataplane.ready else 400)


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": codec.SERVER_NAME, "version": __version__, "extensions": list(codec.EXTENSIONS)}


@router.get("/models/{name}/ready", summary="Model readiness: 200 ready, 400 not yet, 404 unknown")
async def model_ready(dataplane: DataPlaneDep, name: ModelName) -> Response:
    return Response(status_code=200 if dataplane.model_ready(name) else 400)


@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness, for a version")
async def model_version_ready(dataplane: DataPlaneDep, name: ModelName, version: Version) -> Response:
    return Response(status_code=200 if dataplane.model_ready(name, version) else 400)


# ------------------------------------------------------------------------------------------------ Triton's extensions
# (before the metadata routes: /models/stats is not a model named "stats")


@router.get("/models/stats", summary="Statistics of every model version (Triton's statistics extension)")
async def all_statistics(dataplane: DataPlaneDep) -> dict[str, Any]:
    return extensions.statistics(dataplane.statistics())


@router.get("/models/{name}/stats", summary="Statistics of a model's versions, summed over every worker process")
async def model_statistics(dataplane: DataPlaneDep, name: ModelName) -> dict[str, Any]:
    return extensions.statistics(dataplane.statistics(name))


@router.get("/models/{name}/versions/{version}/stats", summary="Statistics of a model version")
async def model_version_statistics(dataplane: DataPlaneDep, name: ModelName, version: Version) -> dict[str, Any]:
    return extensions.statistics(dataplane.statistics(name, version))


@router.get("/models/{name}/config", summary="Model configuration (Triton's model configuration extension)")
async def model_config(dataplane: DataPlaneDep, name: ModelName) -> dict[str, Any]:
    return extensions.model_config(dataplane.model(name), request_timeout_s=dataplane.request_timeout_s)


@router.get("/models/{name}/versions/{version}/config", summary="Model configuration, for a version")
async def model_version_config(dataplane: DataPlaneDep, name: ModelName, version: Version) -> dict[str, Any]:
    return extensions.model_config(dataplane.model(name, version), request_timeout_s=dataplane.request_timeout_s)


def _metadata(model: ModelDescription) -> dict[str, Any]:
    spec = model.spec
    return {
        "name": model.name,
        "versions": list(model.versions),
        "platform": codec.PLATFORM,
        "inputs": [{"name": spec.input_name, "datatype": codec.FP32, "shape": codec.input_shape(*spec.input_shape)}],
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
    return _metadata(dataplane.model(name))


@router.get("/models/{name}/versions/{version}", summary="Model metadata, for a version")
async def model_version_metadata(dataplane: DataPlaneDep, name: ModelName, version: Version) -> dict[str, Any]:
    return _metadata(dataplane.model(name, version))


# ------------------------------------------------------------------------------------------------ inference


_ANSWER_CODINGS = ("gzip", "deflate", "identity")
"""What an answer can be sent as, in our order of preference among equally wanted codings."""


def _quality(text: str) -> float | None:
    """An Accept-Encoding weight (RFC 9110 §12.4.2: 0 to 1, at most three decimals); None when malformed."""
    name, _, value = text.partition("=")
    if name.strip().lower() != "q":
        return 1.0  # another parameter: codings take none, ignore it
    try:
        weight = float(value.strip())
    except ValueError:
        return None
    return weight if 0.0 <= weight <= 1.0 else None


def response_encoding(accept_encoding: str | None) -> str:
    """The content coding to answer in, from the request's Accept-Encoding (RFC 9110 §12.5.3): the acceptable
    coding (weight above 0) with the highest weight, `*` standing for any coding not named; identity when the
    header is absent, names nothing we can send, or only refuses codings. Identity named by no entry counts as
    acceptable but least wanted; when even it is refused, we still answer uncompressed rather than 406, as most
    servers do."""
    if not accept_encoding:
        return "identity"
    weights: dict[str, float] = {}
    for entry in accept_encoding.split(","):
        coding, *parameters = entry.split(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        weight = 1.0
        for parameter in parameters:
            found = _quality(parameter)
            weight = 0.0 if found is None else min(weight, found)
        weights[coding] = weight
    if "x-gzip" in weights and "gzip" not in weights:
        weights["gzip"] = weights["x-gzip"]
    default = weights.get("*")
    ranked = []
    for preference, coding in enumerate(_ANSWER_CODINGS):
        named = weights.get(coding, default)
        # Identity that no entry names is acceptable but least wanted.
        weight = named if named is not None else (0.0005 if coding == "identity" else 0.0)
        if weight > 0:
            ranked.append((-weight, preference, coding))
    return min(ranked)[2] if ranked else "identity"


def _compress(body: bytes, request: Request) -> tuple[bytes, dict[str, str]]:
    # The answer depends on Accept-Encoding whichever coding is chosen: caches must key on it.
    encoding = response_encoding(request.headers.get("accept-encoding"))
    if encoding == "gzip":
        return gzip.compress(body, compresslevel=5), {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
    if encoding == "deflate":
        return zlib.compress(body, 5), {"Content-Encoding": "deflate", "Vary": "Accept-Encoding"}
    return body, {"Vary": "Accept-Encoding"}


async def infer_response(
    request: Request, dataplane: DataPlane, limits: LimitsSettings, name: str, version: str | None
) -> Response:
    """The route's work, shared by the FastAPI routes below and the lean dispatcher (`api.hot_paths`)."""
    body = V2HttpBody(
        request,
        UploadLimits(dataplane.max_upload_bytes),
        JsonLimits(limits.max_json_depth, limits.max_json_integer_digits),
    )
    result = await dataplane.infer(
        InferenceRequest(name, body, version=version, protocol="v2-http", received_at=time.monotonic())
    )
    assert body.parsed is not None
    content, json_length = encode_response(result, body.parsed, request.state.request_id)
    content, headers = _compress(content, request)
    if json_length is not None:
        headers[HEADER_LENGTH] = str(json_length)
        return Response(content, media_type="application/octet-stream", headers=headers)
    return Response(content, media_type="application/json", headers=headers)


@router.post("/models/{name}/infer", openapi_extra=_INFER_BODY, summary="Inference (Open Inference Protocol)")
async def infer(request: Request, dataplane: DataPlaneDep, limits: LimitsDep, name: ModelName) -> Response:
    return await infer_response(request, dataplane, limits, name, None)


@router.post("/models/{name}/versions/{version}/infer", openapi_extra=_INFER_BODY, summary="Inference, for a version")
async def infer_version(
    request: Request, dataplane: DataPlaneDep, limits: LimitsDep, name: ModelName, version: Version
) -> Response:
    return await infer_response(request, dataplane, limits, name, version)
