"""GET / (the demo page for people) and GET /docs (Swagger UI), both served from package data: no CDN, no build step.

The page (`service/static/`) is plain HTML, CSS and JavaScript that calls the public API only (/v1/models,
/v1/.../classify). Swagger UI's files come from the `fastapi-offline` package, which ships them; the app serves
them itself, so /docs renders on an air-gapped cluster. FastAPI's own /docs page (`get_swagger_ui_html`) starts
Swagger UI with an inline <script>; ours starts it from a static file (`docs.js`) with its settings in a JSON data
block, so /docs carries the same strict Content-Security-Policy as the page: scripts from this origin only.

Caching: each asset's URL carries a hash of its content (``static/page.js?v=<hash>``); a request with the current
hash is answered as immutable for a year, any other (a bare URL, an old hash) revalidates through its ETag. The
HTML pages are ``no-cache``, so a new release is picked up at the next load.
"""

from __future__ import annotations

import hashlib
import html
import json
import mimetypes
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import swagger_ui_default_parameters
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

STATIC_URL = "static/"
"""Where assets are served, relative to the app's root (pages link to them relatively, so a root_path works)."""

SWAGGER_UI_FILES = ("swagger-ui-bundle.js", "swagger-ui.css")
"""What /docs needs from the `fastapi_offline` package's `static` folder, served under ``static/swagger-ui/``."""

_PAGE_TEMPLATES = ("index.html", "docs.html")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""For both pages: nothing inline, nothing from another origin; `blob:` and `data:` images for the previews of
the chosen files and for Swagger UI's icons."""

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

_COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_PAGE_HEADERS = {
    **_COMMON_HEADERS,
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Cache-Control": REVALIDATE,
}
_ASSET_HEADERS = {**_COMMON_HEADERS, "Cross-Origin-Resource-Policy": "same-origin"}

_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    version: str
    """The first 16 hex digits of the SHA-256 of `body`: the ``v`` query parameter and the ETag."""

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


def _asset(body: bytes, name: str) -> Asset:
    suffix = name[name.rfind(".") :]
    media_type = _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Asset(body, media_type, hashlib.sha256(body).hexdigest()[:16])


@cache
def load_assets() -> tuple[dict[str, Asset], dict[str, str]]:
    """Every servable asset by its name under ``static/``, and the page templates by name (read once a process)."""
    folder = resources.files("service") / "static"
    assets: dict[str, Asset] = {}
    templates: dict[str, str] = {}
    for entry in folder.iterdir():
        if not entry.is_file() or entry.name.startswith("."):
            continue
        if entry.name in _PAGE_TEMPLATES:
            templates[entry.name] = entry.read_text(encoding="utf-8")
        elif entry.name.endswith(tuple(_MEDIA_TYPES)):
            assets[entry.name] = _asset(entry.read_bytes(), entry.name)
    missing = [name for name in _PAGE_TEMPLATES if name not in templates]
    if missing:
        raise RuntimeError(f"the package data service/static/ lacks {', '.join(missing)}; reinstall resnet-serve")
    swagger = resources.files("fastapi_offline") / "static"
    for name in SWAGGER_UI_FILES:
        entry = swagger / name
        if not entry.is_file():
            raise RuntimeError(f"the fastapi-offline package has no static/{name}; /docs needs its Swagger UI files")
        assets[f"swagger-ui/{name}"] = _asset(entry.read_bytes(), name)
    return assets, templates


_PLACEHOLDER = re.compile(r"\{\{\s*(asset|value):\s*([^}\s]+)\s*\}\}")


def render(template: str, assets: dict[str, Asset], values: dict[str, str]) -> str:
    """Fill ``{{asset:NAME}}`` with the asset's versioned URL and ``{{value:NAME}}`` with `values[NAME]`,
    HTML-escaped; an unknown name is a packaging bug, so it raises."""

    def fill(match: re.Match[str]) -> str:
        kind, name = match.groups()
        if kind == "asset":
            return html.escape(f"{STATIC_URL}{name}?v={assets[name].version}")
        return html.escape(values[name])

    return _PLACEHOLDER.sub(fill, template)


def _relative(url: str) -> str:
    """An app path as a URL relative to a page at the app's top level (/docs, /), so a root_path is kept."""
    return url.lstrip("/")


def build_router(
    *, openapi_url: str | None, title: str, swagger_ui_parameters: dict[str, Any] | None = None
) -> APIRouter:
    """The page at /, Swagger UI at /docs (when the app has an OpenAPI schema) and their assets at /static/."""
    assets, templates = load_assets()
    router = APIRouter(include_in_schema=False)
    index_html = render(templates["index.html"], assets, {"title": title})

    @router.get("/", response_class=HTMLResponse)
    async def demo_page() -> HTMLResponse:
        return HTMLResponse(index_html, headers=_PAGE_HEADERS)

    if openapi_url is not None:
        # The same settings FastAPI's own /docs passes, as JSON data that docs.js reads: nothing inline runs.
        config = {
            **swagger_ui_default_parameters,
            **(swagger_ui_parameters or {}),
            "url": _relative(openapi_url),
            "validatorUrl": None,
        }
        docs_html = render(
            templates["docs.html"], assets, {"title": f"{title}: API docs", "swagger_config": json.dumps(config)}
        )

        @router.get("/docs", response_class=HTMLResponse)
        async def swagger_ui() -> HTMLResponse:
            return HTMLResponse(docs_html, headers=_PAGE_HEADERS)

    @router.get("/static/{name:path}")
    async def static_asset(request: Request, name: str) -> Response:
        asset = assets.get(name)
        if asset is None:
            raise StarletteHTTPException(status_code=404)
        current = request.query_params.get("v") == asset.version
        headers = {**_ASSET_HEADERS, "ETag": asset.etag, "Cache-Control": IMMUTABLE if current else REVALIDATE}
        if asset.etag in _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    return router


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
