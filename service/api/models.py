"""GET /v1/models, /v1/models/{name} and /v1/models/{name}/versions/{version}: what is served and how. A model is
described by the version that answers requests naming none, with every version the server has and its state."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from service.api.deps import DataPlaneDep
from service.api.schemas import ErrorResponse, ModelListOut, ModelOut
from service.contract import ModelDescription
from service.dataplane import DataPlane

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelListOut, summary="List the served models")
async def list_models(dataplane: DataPlaneDep) -> ModelListOut:
    versions = _versions_by_name(dataplane)
    return ModelListOut(
        default_model=dataplane.default_model or "",
        models=[ModelOut.from_description(dataplane.model(name), versions[name]) for name in sorted(versions)],
    )


def _versions_by_name(dataplane: DataPlane) -> dict[str, list[ModelDescription]]:
    by_name: dict[str, list[ModelDescription]] = {}
    for description in dataplane.models():
        by_name.setdefault(description.name, []).append(description)
    return by_name


@router.get(
    "/v1/models/{name}",
    response_model=ModelOut,
    responses={404: {"model": ErrorResponse, "description": "Unknown model"}},
    summary="Describe one model",
)
async def get_model(dataplane: DataPlaneDep, name: Annotated[str, Path(description="Model name.")]) -> ModelOut:
    return ModelOut.from_description(dataplane.model(name), _versions_by_name(dataplane).get(name, []))


@router.get(
    "/v1/models/{name}/versions/{version}",
    response_model=ModelOut,
    responses={404: {"model": ErrorResponse, "description": "Unknown model or version"}},
    summary="Describe one version of a model",
)
async def get_model_version(
    dataplane: DataPlaneDep,
    name: Annotated[str, Path(description="Model name.")],
    version: Annotated[str, Path(description="Model version (a positive integer).")],
) -> ModelOut:
    return ModelOut.from_description(dataplane.model(name, version), _versions_by_name(dataplane).get(name, []))
