"""FastAPI dependencies: how a route gets the app's data plane, metrics and limits (never by reading app.state
itself).

They are coroutines on purpose: FastAPI runs a plain `def` dependency in a worker thread, a hand-off per request."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from service.config import LimitsSettings
from service.dataplane import DataPlane
from service.metrics import ServiceMetrics


async def _dataplane(request: Request) -> DataPlane:
    return cast(DataPlane, request.app.state.dataplane)


async def _metrics(request: Request) -> ServiceMetrics:
    return cast(ServiceMetrics, request.app.state.metrics)


async def _limits(request: Request) -> LimitsSettings:
    return cast(LimitsSettings, request.app.state.limits)


DataPlaneDep = Annotated[DataPlane, Depends(_dataplane)]
MetricsDep = Annotated[ServiceMetrics, Depends(_metrics)]
LimitsDep = Annotated[LimitsSettings, Depends(_limits)]
