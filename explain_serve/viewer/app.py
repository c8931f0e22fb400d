"""The viewer's web app (Starlette): the page, and a narrow proxy to one TorchServe.

Routes: ``GET /`` and ``/static/*`` (the page, files of this package); ``GET /api/models``,
``GET /api/describe/{model}/{version}``; ``POST /api/explain/{model}/{version}`` and
``POST /api/compare/{model}`` (JSON from this page's own origin only, at most the server's
``max_request_size``); ``GET /api/reports`` and ``/reports/{name}`` (files of ``--reports``).

The keys stay here: the browser never sees them, and answers are checked not to contain them.
Hosts other than the bound one are refused (DNS rebinding), and every page gets a CSP that allows
only this origin's scripts.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .compare import compare
from .upstream import Upstream, valid_name

STATIC = Path(__file__).resolve().parent / "static"
REPORT_TYPES = {".html": "text/html; charset=utf-8", ".json": "application/json", ".png": "image/png"}
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")
# Reports are self-contained HTML (inline styles and scripts): sandboxed, so they run in an opaque
# origin and cannot call this app's API.
REPORT_CSP = "sandbox allow-scripts allow-popups; default-src 'self' data: 'unsafe-inline'"


def _error(status: int, message: str, field: Optional[str] = None) -> JSONResponse:
    body: Dict[str, Any] = {"code": status, "message": message}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status)


class Viewer:
    """The app's state: the upstream server, the reports folder and the hosts this app answers to."""

    def __init__(self, upstream: Upstream, reports: Optional[Path] = None) -> None:
        self.upstream = upstream
        self.reports = Path(reports).resolve() if reports else None

    def _answer(self, status: int, body: Any) -> Response:
        """Upstream's answer, refused if it carries a key (it never should)."""
        text = json.dumps(body) if not isinstance(body, str) else json.dumps({"code": status, "message": body})
        if any(secret in text for secret in self.upstream.secrets):
            return _error(502, "the server's answer contained a key; not forwarded")
        return Response(text, status_code=status, media_type="application/json")

    # -- GET -------------------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    async def models(self, request: Request) -> Response:
        return self._answer(*await run_in_threadpool(self.upstream.models))

    async def describe(self, request: Request) -> Response:
        model, version = request.path_params["model"], request.path_params["version"]
        if not (valid_name(model) and valid_name(version)):
            return _error(400, "model and version are names such as digits and 1.0")
        return self._answer(*await run_in_threadpool(self.upstream.describe, model, version))

    async def report_list(self, request: Request) -> Response:
        return JSONResponse({"folder": str(self.reports) if self.reports else None, "reports": self._reports()})

    def _reports(self) -> List[Dict[str, Any]]:
        if self.reports is None or not self.reports.is_dir():
            return []
        files = [p for p in self.reports.iterdir() if p.is_file() and p.suffix in REPORT_TYPES]
        files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        return [{"name": p.name, "bytes": p.stat().st_size, "modified": p.stat().st_mtime} for p in files]

    async def report(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in {r["name"] for r in self._reports()}:  # only files listed: no paths, no traversal
            return _error(404, f"no report named {name!r} in the reports folder")
        path = self.reports / name
        return FileResponse(path, media_type=REPORT_TYPES[path.suffix], headers={"Content-Security-Policy": REPORT_CSP})

    # -- POST ------------------------------------------------------------------------------------
    async def _json_body(self, request: Request):
        """The request's JSON object, or an error response (origin, content type, size, syntax)."""
        origin = request.headers.get("origin")
        own = f"{request.url.scheme}://{request.headers.get('host')}"
        if origin != own or request.headers.get("sec-fetch-site", "same-origin") != "same-origin":
            return None, _error(403, "only this page may post here (cross-origin request refused)")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return None, _error(415, f"unsupported Content-Type {ctype or '(none)'}: send application/json")
        limit = self.upstream.max_request_size
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return None, _error(413, f"the request has {declared} bytes; the server accepts at most {limit}")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                return None, _error(413, f"the request is over the server's limit of {limit} bytes")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None, _error(400, "the body is not valid JSON")
        if not isinstance(body, dict):
            return None, _error(400, "the body must be a JSON object")
        return body, None

    async def explain(self, request: Request) -> Response:
        body, err = await self._json_body(request)
        if err is not None:
            return err
        model, version = request.path_params["model"], request.path_params["version"]
        if not (valid_name(model) and valid_name(version)):
            return _error(400, "model and version are names such as digits and 1.0")
        return self._answer(*await run_in_threadpool(self.upstream.explain, model, version, body))

    async def compare(self, request: Request) -> Response:
        body, err = await self._json_body(request)
        if err is not None:
            return err
        model = request.path_params["model"]
        if not valid_name(model):
            return _error(400, "the model is a name such as digits")
        return self._answer(*await run_in_threadpool(compare, self.upstream, model, body))


def make_app(upstream: Upstream, reports: Optional[Path] = None, hosts: Optional[List[str]] = None) -> Starlette:
    """The ASGI app; ``hosts`` are the Host names it answers to (default: loopback names)."""
    v = Viewer(upstream, reports)
    routes = [
        Route("/", v.index),
        Route("/api/models", v.models),
        Route("/api/describe/{model}/{version}", v.describe),
        Route("/api/explain/{model}/{version}", v.explain, methods=["POST"]),
        Route("/api/compare/{model}", v.compare, methods=["POST"]),
        Route("/api/reports", v.report_list),
        Route("/reports/{name}", v.report),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=[
        Middleware(TrustedHostMiddleware, allowed_hosts=hosts or ["127.0.0.1", "localhost", "[::1]"]),
        Middleware(SecurityHeaders),
    ])


class SecurityHeaders:
    """ASGI middleware: the page's CSP (unless the route set its own), no sniffing, no referrer, no cache."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "content-security-policy" not in headers:
                    headers["Content-Security-Policy"] = PAGE_CSP
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)
