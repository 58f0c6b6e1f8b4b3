"""GET /metrics: Prometheus text exposition of the app's registry."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.metrics import METRICS_CONTENT_TYPE, ServiceMetrics

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    registry: ServiceMetrics = request.app.state.metrics
    return Response(registry.render(), media_type=METRICS_CONTENT_TYPE)
