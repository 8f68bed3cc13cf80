"""The FastAPI application: the native API, the annotation tools' protocols, limits, keys and errors.

Every error is JSON ``{"error": {"code", "message"}}`` with its status (400/422 bad request, 401 key,
404 unknown image, 413 body or image too large, 503 busy with ``Retry-After``, 504 timeout); the
X-AnyLabeling protocol keeps its own ``{"success": false, "error": {...}}`` and answers bad requests
with 200. Bad input never gives a
500, and no response carries a traceback. Request data stays in memory: nothing is written to disk.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser
from starlette.types import ASGIApp, Receive, Scope, Send

from .labelstudio import LABEL_STUDIO_PREFIX, label_studio_router
from .masks import WireError
from .native import native_router
from .service import ApiError, XSamService
from .xanylabeling import X_ANYLABELING_PREFIX, x_anylabeling_router

logger = logging.getLogger("xsam.serve")
OPEN_PATHS = frozenset(
    {
        "/health",
        "/ready",
        "/docs",
        "/openapi.json",
        f"{X_ANYLABELING_PREFIX}/health",
        f"{LABEL_STUDIO_PREFIX}/health",
    }
)
"""Routes that need no API key."""


def create_app(service: XSamService) -> FastAPI:
    """The server's application around ``service`` (which it closes on shutdown)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="xsam-torch",
        version=_version(),
        description="X-SAM segmentation: every task, one model, images encoded once.",
        lifespan=lifespan,
    )
    app.state.service = service
    # multipart uploads stay in memory up to the body limit, so request data never touches the disk
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, service.settings.max_body_bytes)
    _add_error_handlers(app)
    _add_health(app, service)
    app.include_router(native_router(service))
    app.include_router(x_anylabeling_router(service), prefix=X_ANYLABELING_PREFIX)
    app.include_router(label_studio_router(service), prefix=LABEL_STUDIO_PREFIX)
    app.add_middleware(
        _Guard, api_key=service.settings.api_key, max_body_bytes=service.settings.max_body_bytes
    )
    return app


def _add_health(app: FastAPI, service: XSamService) -> None:
    @app.get("/health", tags=["health"])
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["health"])
    async def ready() -> dict[str, Any]:
        """Readiness: the model is loaded; how many requests wait and what the image cache holds."""
        return {
            "ready": True,
            "model": service.model_id,
            "queued": service.worker.waiting,
            "cached_images": len(service.cache),
            "cache_bytes": service.cache.nbytes,
        }


def error_body(path: str, code: str, message: str) -> dict[str, Any]:
    """The JSON error of a route: the X-AnyLabeling protocol's own shape under its prefix."""
    if path.startswith(X_ANYLABELING_PREFIX):
        return {"success": False, "error": {"code": code.upper(), "message": message}}
    return {"error": {"code": code, "message": message}}


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        body = error_body(request.url.path, error.code, error.message)
        return JSONResponse(body, status_code=_status(request.url.path, error.status), headers=error.headers)

    @app.exception_handler(WireError)
    async def undecodable(request: Request, error: WireError) -> JSONResponse:
        body = error_body(request.url.path, "invalid_request", str(error))
        return JSONResponse(body, status_code=_status(request.url.path, 400))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem.get('loc', ()))}: {problem.get('msg', '')}"
            for problem in error.errors()[:5]
        )
        body = error_body(request.url.path, "invalid_request", problems)
        return JSONResponse(body, status_code=_status(request.url.path, 422))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        body = error_body(request.url.path, code, str(error.detail))
        return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s", request.url.path)
        body = error_body(request.url.path, "internal_error", "the request failed inside the server")
        return JSONResponse(body, status_code=500)


class _Guard:
    """ASGI middleware: the API key and the body-size limit, checked before a route reads anything."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        path = scope["path"]
        if self.api_key and path not in OPEN_PATHS and not _key_matches(headers, self.api_key):
            await _reply(send, path, 401, "unauthorized", "missing or wrong API key")
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _reply(send, path, 413, "body_too_large", self._too_large())
            return
        await self.app(scope, self._limited(receive, send, path), send)

    def _too_large(self) -> str:
        return f"the request body is larger than {self.max_body_bytes:,} bytes (--max-body-bytes)"

    def _limited(self, receive: Receive, send: Send, path: str) -> Receive:
        """``receive`` that stops a body streamed past the limit (no Content-Length to check)."""
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise ApiError(413, "body_too_large", self._too_large())
            return message

        return limited


def _status(path: str, status: int) -> int:
    """The X-AnyLabeling protocol answers a bad request with 200 and ``success: false``; refusals
    (401, 413) and a busy or slow server (503, 504) keep their status there too."""
    return 200 if path.startswith(X_ANYLABELING_PREFIX) and status in (400, 404, 422) else status


def _key_matches(headers: dict[str, str], key: str) -> bool:
    """The key as ``Authorization: Bearer|Token <key>``, ``Authorization: Basic`` (password),
    ``X-API-Key`` or X-AnyLabeling's ``Token`` header."""
    candidates = [headers.get("x-api-key", ""), headers.get("token", "")]
    scheme, _, credential = headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("bearer", "token"):
        candidates.append(credential.strip())
    elif scheme.lower() == "basic":
        with contextlib.suppress(ValueError):  # undecodable: no candidate
            candidates.append(base64.b64decode(credential).decode("utf-8").partition(":")[2])
    return any(hmac.compare_digest(candidate.encode(), key.encode()) for candidate in candidates if candidate)


async def _reply(send: Send, path: str, status: int, code: str, message: str) -> None:
    """A refusal before any route runs (key, body size): the real status on every prefix."""
    response = JSONResponse(error_body(path, code, message), status_code=status)
    if status == 401 and not path.startswith(X_ANYLABELING_PREFIX):
        response.headers["WWW-Authenticate"] = "Bearer"
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xsam-torch")
    except PackageNotFoundError:
        return "unknown"
