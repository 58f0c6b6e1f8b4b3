"""POST /v1/models/{name}/classify and POST /v1/classify: HTTP in, data plane, JSON out."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from service.api.deps import DataPlaneDep
from service.api.schemas import ClassifyResponse, ErrorResponse
from service.api.uploads import UploadedImages, UploadLimits
from service.dataplane import DataPlane
from service.inference import InferenceRequest, RequestedOutput

router = APIRouter(tags=["classify"])

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Either multipart/form-data with one or more parts named `file`, or one raw image as the "
        "body with an image/* Content-Type. JPEG, PNG, WebP, GIF (first frame), BMP and TIFF are decoded.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    "required": ["file"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Undecodable or hostile image, or malformed multipart body"},
    404: {"model": ErrorResponse, "description": "Unknown model"},
    413: {"model": ErrorResponse, "description": "Upload, file count or image pixels over the limit"},
    415: {"model": ErrorResponse, "description": "Unsupported Content-Type or image format"},
    422: {"model": ErrorResponse, "description": "Bad parameters (top_k, unknown form field, no image)"},
    503: {"model": ErrorResponse, "description": "Overloaded (with Retry-After), not ready, or shutting down"},
    504: {"model": ErrorResponse, "description": "Request deadline passed"},
}

TopK = Annotated[
    int | None,
    Query(ge=1, description="How many classes to return per image (1 to the number of classes; default 5)."),
]


async def classify(
    request: Request, dataplane: DataPlane, model_name: str | None, top_k: int | None, version: str | None = None
) -> ClassifyResponse:
    """The route's work, shared by the FastAPI routes below and the lean dispatcher (`api.hot_paths`)."""
    result = await dataplane.infer(
        InferenceRequest(
            model_name,
            UploadedImages(request, UploadLimits(dataplane.max_upload_bytes)),
            version=version,
            outputs=[RequestedOutput(ranked=True, k=top_k, asked_as="top_k")],
            protocol="v1",
            received_at=time.monotonic(),
        )
    )
    response = ClassifyResponse.from_result(result)
    request.state.timings_ms = response.timings_ms.model_dump()
    return response


@router.post(
    "/v1/models/{name}/classify",
    response_model=ClassifyResponse,
    responses=_ERRORS,
    openapi_extra=_UPLOAD_BODY,
    summary="Classify images with the named model",
)
async def classify_with_model(
    request: Request,
    dataplane: DataPlaneDep,
    name: Annotated[str, Path(description="Model name (its file stem in the model repository).")],
    top_k: TopK = None,
) -> ClassifyResponse:
    return await classify(request, dataplane, name, top_k)


@router.post(
    "/v1/models/{name}/versions/{version}/classify",
    response_model=ClassifyResponse,
    responses=_ERRORS,
    openapi_extra=_UPLOAD_BODY,
    summary="Classify images with one version of the named model",
)
async def classify_with_model_version(
    request: Request,
    dataplane: DataPlaneDep,
    name: Annotated[str, Path(description="Model name (its file stem in the model repository).")],
    version: Annotated[str, Path(description="Model version (a positive integer).")],
    top_k: TopK = None,
) -> ClassifyResponse:
    return await classify(request, dataplane, name, top_k, version)


@router.post(
    "/v1/classify",
    response_model=ClassifyResponse,
    responses=_ERRORS,
    openapi_extra=_UPLOAD_BODY,
    summary="Classify images with the default model",
)
async def classify_with_default_model(
    request: Request, dataplane: DataPlaneDep, top_k: TopK = None
) -> ClassifyResponse:
    return await classify(request, dataplane, None, top_k)
