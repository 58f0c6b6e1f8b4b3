"""POST /v1/models/{name}/classify and POST /v1/classify: HTTP in, data plane, JSON out."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from service.api.deps import DataPlaneDep
from service.api.disconnect import unless_client_leaves
from service.api.schemas import ClassifyResponse, ErrorResponse
from service.api.uploads import UploadLimits, check_media_type, declared_length, read_uploads
from service.dataplane import DataPlane

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


async def _classify(request: Request, dataplane: DataPlane, model_name: str | None, top_k: int | None
                    ) -> ClassifyResponse:
    received_at = time.monotonic()
    limits = UploadLimits(dataplane.max_upload_bytes, dataplane.max_files_per_request)
    check_media_type(request)
    declared = declared_length(request, limits)
    # The one admission, before any of the body is read: every request carries at least one image, so a model
    # without room for one (or a byte budget without room for the declared body) is answered 503 at once.
    with dataplane.admit(model_name, top_k, declared_bytes=declared, received_at=received_at) as ticket:
        request.state.model, request.state.protocol = ticket.model.name, "v1"
        uploads = await read_uploads(request, limits, ticket)
        request.state.images = len(uploads)
        outcome = await unless_client_leaves(request, dataplane.classify(ticket, uploads))
    response = ClassifyResponse.from_outcome(outcome)
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
    return await _classify(request, dataplane, name, top_k)


@router.post(
    "/v1/classify",
    response_model=ClassifyResponse,
    responses=_ERRORS,
    openapi_extra=_UPLOAD_BODY,
    summary="Classify images with the default model",
)
async def classify_with_default_model(request: Request, dataplane: DataPlaneDep, top_k: TopK = None
                                      ) -> ClassifyResponse:
    return await _classify(request, dataplane, None, top_k)
