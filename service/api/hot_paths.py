"""The inference routes served without FastAPI's per-request machinery, as a thin ASGI dispatcher.

Profiled on the bundled model at saturation, FastAPI's routing stack (its exception middleware, router, dependency
solving, parameter validation, and the validation and serialisation of the response model) took about a third of
the event loop's time per classify request. The routes that carry the load, /v1 classify and V2 infer, are
matched here first and handed to the same route functions the FastAPI routes call, with the same parameters
checked the same way and every error answered as `api.errors` answers it. The FastAPI routes stay: they are what
/docs and /openapi.json describe, and they serve whatever is not matched here. The serving gate sits outside this
dispatcher, so keys, request IDs, the drain, metrics and the access log apply alike.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api import classify, v2
from service.api.errors import error_response
from service.config import LimitsSettings
from service.dataplane import DataPlane
from service.errors import InvalidParameter, ServiceError
from service.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

Handler = Callable[[Request, DataPlane, LimitsSettings, dict[str, str]], Awaitable[Response]]


@dataclass(frozen=True)
class _Route:
    pattern: re.Pattern[str]
    template: str
    """The FastAPI route's path, which metrics and the access log name the request by."""
    handler: Handler


@dataclass(frozen=True)
class _Template:
    """What the serving gate reads off a matched route: its path template."""

    path: str


_NAME = r"(?P<name>[^/]+)"
_VERSION = r"(?P<version>[^/]+)"


def _top_k(request: Request) -> int | None:
    values = [
        value for key, value in parse_qsl(request.scope.get("query_string", b"").decode("latin-1")) if key == "top_k"
    ]
    if not values:
        return None
    raw = values[-1]
    if not raw.strip().isdigit() or int(raw) < 1:
        raise InvalidParameter(
            f"invalid request parameters: query.top_k: must be a whole number of at least 1, got {raw!r}"
        )
    return int(raw)


async def _classify(request: Request, dataplane: DataPlane, limits: LimitsSettings, params: dict[str, str]) -> Response:
    answer = await classify.classify(request, dataplane, params.get("name"), _top_k(request), params.get("version"))
    return Response(answer.model_dump_json(), media_type="application/json")


async def _infer(request: Request, dataplane: DataPlane, limits: LimitsSettings, params: dict[str, str]) -> Response:
    return await v2.infer_response(request, dataplane, limits, params["name"], params.get("version"))


_ROUTES = (
    _Route(re.compile(r"/v1/classify"), "/v1/classify", _classify),
    _Route(re.compile(rf"/v1/models/{_NAME}/classify"), "/v1/models/{name}/classify", _classify),
    _Route(
        re.compile(rf"/v1/models/{_NAME}/versions/{_VERSION}/classify"),
        "/v1/models/{name}/versions/{version}/classify",
        _classify,
    ),
    _Route(re.compile(rf"/v2/models/{_NAME}/infer"), "/v2/models/{name}/infer", _infer),
    _Route(
        re.compile(rf"/v2/models/{_NAME}/versions/{_VERSION}/infer"),
        "/v2/models/{name}/versions/{version}/infer",
        _infer,
    ),
)


class HotPaths:
    """ASGI middleware: POSTs to the inference routes are served here, everything else by the app within."""

    def __init__(self, app: ASGIApp, *, dataplane: DataPlane, metrics: ServiceMetrics, limits: LimitsSettings) -> None:
        self.app = app
        self._dataplane = dataplane
        self._limits = limits
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            for route in _ROUTES:
                match = route.pattern.fullmatch(path)
                if match is not None:
                    scope["route"] = _Template(route.template)
                    await self._serve(route, match.groupdict(), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, route: _Route, params: dict[str, str], scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await route.handler(Request(scope, receive), self._dataplane, self._limits, params)
        except ServiceError as error:
            response = self._refused(error, scope)
        # Anything else is a bug: it reaches the serving gate, which answers 500 and closes the connection.
        await response(scope, receive, send)

    def _refused(self, error: ServiceError, scope: Scope) -> Response:
        self._metrics.count_rejection(error)
        if error.status_code >= 500 and error.status_code != 503:
            logger.warning(
                "%s %s -> %d %s: %s", scope["method"], scope["path"], error.status_code, error.code, error.message
            )
        return error_response(error, scope)
