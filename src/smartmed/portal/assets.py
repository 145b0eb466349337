"""Front-end files served by the application itself: no page loads anything from elsewhere.

The libraries come from the npm registry through the project's ``package.json``
(``npm ci`` in ``scripts/setup``) and are served from ``node_modules`` under
``/static/vendor/``; only the files listed in :data:`VENDOR` are reachable. The portal's
own CSS and JavaScript are in ``portal/static`` under ``/static/portal/``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

VENDOR = {
    "bootstrap.min.css": "bootstrap/dist/css/bootstrap.min.css",
    "htmx.min.js": "htmx.org/dist/htmx.min.js",
    "alpine-csp.min.js": "@alpinejs/csp/dist/cdn.min.js",
    "echarts.min.js": "echarts/dist/echarts.min.js",
}
OWN = Path(__file__).parent / "static"
_MEDIA = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
_CACHE = {"Cache-Control": "public, max-age=3600"}


def locate_node_modules(configured: Path | None) -> Path | None:
    """The ``node_modules`` folder with the portal's packages: configured, else found
    above the working directory or above this file."""
    if configured is not None:
        return configured
    for start in (Path.cwd(), Path(__file__).resolve()):
        for folder in [start, *start.parents]:
            candidate = folder / "node_modules"
            if (candidate / "htmx.org").is_dir():
                return candidate
    return None


def build_assets_router(node_modules: Path | None) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/static/vendor/{name}")
    async def vendor(name: str) -> FileResponse:
        relative = VENDOR.get(name)
        if relative is None or node_modules is None or not (node_modules / relative).is_file():
            raise HTTPException(404, "no such file")
        path = node_modules / relative
        return FileResponse(path, media_type=_MEDIA[path.suffix], headers=_CACHE)

    @router.get("/static/portal/{name}")
    async def own(name: str) -> FileResponse:
        path = OWN / name
        if "/" in name or name.startswith(".") or not path.is_file() or path.suffix not in _MEDIA:
            raise HTTPException(404, "no such file")
        return FileResponse(path, media_type=_MEDIA[path.suffix], headers=_CACHE)

    return router
