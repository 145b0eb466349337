"""Front-end files served by the application itself: no page loads anything from elsewhere.

The libraries come from the npm registry through the project's ``package.json``
(``npm ci`` in ``scripts/setup``) and are served from ``node_modules`` under
``/static/vendor/``; only the files listed in :data:`VENDOR` are reachable. The portal's
own CSS and JavaScript are in ``portal/static`` under ``/static/portal/``.

Bootstrap's stylesheet draws its small icons (select arrow, check marks, validation
marks) from ``data:`` URIs, which the platform's Content-Security-Policy
(``default-src 'self'``) blocks. The stylesheet is therefore served rewritten: each
``data:image/svg+xml`` URI becomes a URL under ``/static/vendor/bootstrap-svg/``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, Response

VENDOR = {
    "bootstrap.min.css": "bootstrap/dist/css/bootstrap.min.css",
    "htmx.min.js": "htmx.org/dist/htmx.min.js",
    "alpine-csp.min.js": "@alpinejs/csp/dist/cdn.min.js",
    "echarts.min.js": "echarts/dist/echarts.min.js",
}
OWN = Path(__file__).parent / "static"
_MEDIA = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
_CACHE = {"Cache-Control": "public, max-age=3600"}


_DATA_SVG = re.compile(r'url\("data:image/svg\+xml,([^"]+)"\)')


@lru_cache(maxsize=4)
def bootstrap_css(path: Path) -> tuple[bytes, tuple[bytes, ...]]:
    """Bootstrap's CSS with its inline SVG icons moved to URLs; and those icons."""
    icons: list[bytes] = []

    def move(match: re.Match[str]) -> str:
        icons.append(unquote(match.group(1)).encode())
        return f'url("/static/vendor/bootstrap-svg/{len(icons) - 1}.svg")'

    css = _DATA_SVG.sub(move, path.read_text(encoding="utf-8"))
    return css.encode(), tuple(icons)


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

    def vendor_path(name: str) -> Path:
        relative = VENDOR.get(name)
        if relative is None or node_modules is None or not (node_modules / relative).is_file():
            raise HTTPException(404, "no such file")
        return node_modules / relative

    @router.get("/static/vendor/bootstrap.min.css")
    async def bootstrap() -> Response:
        css, _icons = bootstrap_css(vendor_path("bootstrap.min.css"))
        return Response(css, media_type="text/css", headers=_CACHE)

    @router.get("/static/vendor/bootstrap-svg/{number}.svg")
    async def bootstrap_icon(number: int) -> Response:
        _css, icons = bootstrap_css(vendor_path("bootstrap.min.css"))
        if not 0 <= number < len(icons):
            raise HTTPException(404, "no such file")
        return Response(icons[number], media_type="image/svg+xml", headers=_CACHE)

    @router.get("/static/vendor/{name}")
    async def vendor(name: str) -> FileResponse:
        path = vendor_path(name)
        return FileResponse(path, media_type=_MEDIA[path.suffix], headers=_CACHE)

    @router.get("/static/portal/{name}")
    async def own(name: str) -> FileResponse:
        path = OWN / name
        if "/" in name or name.startswith(".") or not path.is_file() or path.suffix not in _MEDIA:
            raise HTTPException(404, "no such file")
        return FileResponse(path, media_type=_MEDIA[path.suffix], headers=_CACHE)

    return router
