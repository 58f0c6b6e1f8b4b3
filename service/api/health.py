"""GET /healthz (the process is alive) and GET /readyz (models loaded, warmed up, batchers running)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import DataPlaneDep
from service.api.schemas import LivenessOut, ReadinessOut

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=LivenessOut, summary="Liveness: 200 while the process serves HTTP")
async def healthz() -> LivenessOut:
    return LivenessOut(status="alive")


@router.get(
    "/readyz",
    response_model=ReadinessOut,
    responses={503: {"model": ReadinessOut, "description": "Starting, draining or stopped"}},
    summary="Readiness: 200 only when every model is warmed up and its batcher runs",
)
async def readyz(dataplane: DataPlaneDep) -> JSONResponse:
    body = ReadinessOut(status=dataplane.phase, models={m.name: str(m.state) for m in dataplane.models()})
    return JSONResponse(body.model_dump(), status_code=200 if dataplane.ready else 503)
