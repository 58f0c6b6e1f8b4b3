"""GET /metrics: Prometheus text exposition of the app's registry."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.api.deps import MetricsDep
from service.metrics import METRICS_CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics(registry: MetricsDep) -> Response:
    return Response(registry.render(), media_type=METRICS_CONTENT_TYPE)
