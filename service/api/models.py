"""GET /v1/models and GET /v1/models/{name}: what is served and how."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from service.api.deps import DataPlaneDep
from service.api.schemas import ErrorResponse, ModelListOut, ModelOut

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelListOut, summary="List the served models")
async def list_models(dataplane: DataPlaneDep) -> ModelListOut:
    return ModelListOut(
        default_model=dataplane.default_model or "",
        models=[ModelOut.from_description(model) for model in dataplane.models()],
    )


@router.get(
    "/v1/models/{name}",
    response_model=ModelOut,
    responses={404: {"model": ErrorResponse, "description": "Unknown model"}},
    summary="Describe one model",
)
async def get_model(dataplane: DataPlaneDep, name: Annotated[str, Path(description="Model name.")]) -> ModelOut:
    return ModelOut.from_description(dataplane.model(name))
