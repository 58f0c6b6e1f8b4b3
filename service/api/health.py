"""GET /healthz (the process is alive) and GET /readyz (models loaded, warmed up, batchers running)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api.schemas import LivenessOut, ReadinessOut
from service.dataplane import DataPlane
from service.lifecycle import Lifecycle

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
async def readyz(request: Request) -> JSONResponse:
    lifecycle: Lifecycle = request.app.state.lifecycle
    dataplane: DataPlane | None = getattr(request.app.state, "dataplane", None)
    models = {m.name: str(m.state) for m in dataplane.models} if dataplane else {}
    ready = dataplane is not None and dataplane.ready
    body = ReadinessOut(status=str(lifecycle.phase), models=models)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
