"""GET /v1/models and GET /v1/models/{name}: what is served and how."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from service.api.schemas import ErrorResponse, ModelListOut, ModelOut
from service.dataplane import DataPlane

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelListOut, summary="List the served models")
async def list_models(request: Request) -> ModelListOut:
    dataplane: DataPlane = request.app.state.dataplane
    return ModelListOut(
        default_model=dataplane.default_model,
        models=[ModelOut.from_model(m, is_default=m.name == dataplane.default_model) for m in dataplane.models],
    )


@router.get(
    "/v1/models/{name}",
    response_model=ModelOut,
    responses={404: {"model": ErrorResponse, "description": "Unknown model"}},
    summary="Describe one model",
)
async def get_model(request: Request, name: Annotated[str, Path(description="Model name.")]) -> ModelOut:
    dataplane: DataPlane = request.app.state.dataplane
    model = dataplane.get(name)
    return ModelOut.from_model(model, is_default=model.name == dataplane.default_model)
