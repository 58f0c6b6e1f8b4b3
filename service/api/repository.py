"""The Open Inference Protocol's model repository extension over HTTP, as Triton and MLServer serve it.

POST /v2/repository/index lists every model version on disk or loaded with its state (READY, LOADING, UNLOADING,
UNAVAILABLE) and the reason for a failure; it is read-only and as open as model metadata. POST
/v2/repository/models/{name}/load and /unload change what is served (with `--model-control-mode explicit`), and
need an admin key (or, with no keys, a server started with `--allow-model-control-without-keys`): the data plane
decides. A load reads the model from the repository folder only; parameters naming files or paths are refused.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response

from service.api.deps import DataPlaneDep
from service.errors import InvalidParameter, MalformedRequest, UploadTooLarge
from service.model_control import Caller

router = APIRouter(prefix="/v2/repository", tags=["v2 (model repository)"])

ModelName = Annotated[str, Path(description="Model name (its file stem or folder in the model repository).")]
MAX_BODY_BYTES = 64 * 1024
"""Repository requests carry a few parameters at most."""


async def _body(request: Request) -> dict[str, Any]:
    raw = bytearray()
    async for chunk in request.stream():
        raw.extend(chunk)
        if len(raw) > MAX_BODY_BYTES:
            raise UploadTooLarge(f"a repository request body is at most {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRequest(f"the request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise InvalidParameter("the request body must be a JSON object")
    return body


def _caller(request: Request) -> Caller:
    state = request.scope.get("state", {})
    return Caller(key_name=state.get("api_key"), role=state.get("api_key_role"))


def _default_version(parameters: object) -> int | None:
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise InvalidParameter("'parameters' must be a JSON object")
    for key in parameters:
        if key.startswith("file:") or key == "config":
            raise InvalidParameter(
                f"parameter {key!r} is not supported: models load from the server's repository folder only, with "
                f"the configuration found there (publish files into the repository, then load)"
            )
    value = parameters.get("default_version")
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidParameter(f"parameters.default_version must be a positive integer, got {value!r}")
    return value


@router.post("/index", summary="Every model version in the repository, its state and the reason for a failure")
async def index(request: Request, dataplane: DataPlaneDep) -> JSONResponse:
    body = await _body(request)
    ready_only = body.get("ready") is True
    return JSONResponse(
        [
            {"name": status.name, "version": status.version, "state": status.state, "reason": status.reason}
            for status in dataplane.repository_index()
            if not ready_only or status.state == "READY"
        ]
    )


@router.post("/models/{name}/load", summary="Load or reload a model from the repository (explicit mode, admin)")
async def load(request: Request, dataplane: DataPlaneDep, name: ModelName) -> Response:
    body = await _body(request)
    default_version = _default_version(body.get("parameters"))
    await dataplane.load_model(name, _caller(request), default_version=default_version)
    return Response(status_code=200)


@router.post("/models/{name}/unload", summary="Unload a model (explicit mode, admin)")
async def unload(request: Request, dataplane: DataPlaneDep, name: ModelName) -> Response:
    await _body(request)
    await dataplane.unload_model(name, _caller(request))
    return Response(status_code=200)
