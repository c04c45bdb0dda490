"""HTTP surface added to vLLM's app: the vector routes and one ASGI middleware.

Routes (all under ``/v1``, so vLLM's ``--api-key`` check guards them too):

- ``GET  /v1/steering/vectors``          list (name, source, layers, hidden size, metadata, loaded)
- ``GET  /v1/steering/vectors/{name}``   one vector
- ``POST /v1/steering/vectors``          JSON ``{"name": ...}``: load a file of the vector directory;
  any other body: the raw bytes of a ``.safetensors`` file, named by ``?name=`` (``&overwrite=true``
  to replace), size-limited by ``--max-upload-bytes``
- ``DELETE /v1/steering/vectors/{name}`` 409 while requests in flight use the name

The middleware (a) applies the API key to every path vLLM leaves open (``/metrics``,
``/tokenize``, ``/version``, ...), except the liveness probes ``/health`` and ``/ping``, and
(b) refreshes the engine-side steering counters before ``/metrics`` is served.
"""

from __future__ import annotations

import hashlib
import json
import secrets

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.middleware import Middleware

from cast_vllm.serving.service import SteeringService, VectorRouteError

OPEN_PATHS = ("/health", "/ping")


def _error(status: int, message: str, err_type: str = "BadRequestError") -> JSONResponse:
    """Same shape as vLLM's (and OpenAI's) error bodies."""
    return JSONResponse({"error": {"message": message, "type": err_type, "param": None, "code": status}},
                        status_code=status)


def _service(request: Request) -> SteeringService:
    return request.app.state.cast_steering


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise VectorRouteError(413, f"upload of {declared} bytes exceeds the limit of {limit} bytes "
                                    "(--max-upload-bytes)", "PayloadTooLargeError")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise VectorRouteError(413, f"upload exceeds the limit of {limit} bytes (--max-upload-bytes)",
                                   "PayloadTooLargeError")
    return bytes(body)


def build_router() -> APIRouter:
    router = APIRouter()

    @router.get("/v1/steering/vectors")
    async def list_vectors(request: Request):
        return {"object": "list", "data": _service(request).list()}

    @router.get("/v1/steering/vectors/{name}")
    async def get_vector(name: str, request: Request):
        try:
            return _service(request).info(name)
        except VectorRouteError as exc:
            return _error(exc.status, str(exc), exc.err_type)

    @router.post("/v1/steering/vectors")
    async def add_vector(request: Request):
        service = _service(request)
        try:
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type == "application/json":
                try:
                    body = json.loads(await _read_limited(request, 64 * 1024))
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise VectorRouteError(400, f"request body is not valid JSON: {exc}") from None
                if not isinstance(body, dict) or not isinstance(body.get("name"), str):
                    raise VectorRouteError(400, 'JSON body must be {"name": "<vector in the vector directory>"}; '
                                                "to upload, send the .safetensors bytes as the body with ?name=")
                return JSONResponse(service.load(body["name"]), status_code=200)
            if content_type.startswith("multipart/"):
                raise VectorRouteError(400, "multipart uploads are not accepted: send the .safetensors file as the "
                                            "raw request body (Content-Type: application/octet-stream) with ?name=")
            name = request.query_params.get("name")
            if not name:
                raise VectorRouteError(400, "upload needs the vector name as a query parameter: ?name=<name>")
            overwrite = request.query_params.get("overwrite", "false").lower() in ("1", "true", "yes")
            data = await _read_limited(request, service.max_upload_bytes)
            return JSONResponse(service.upload(name, data, overwrite=overwrite), status_code=201)
        except VectorRouteError as exc:
            return _error(exc.status, str(exc), exc.err_type)

    @router.delete("/v1/steering/vectors/{name}")
    async def delete_vector(name: str, request: Request):
        try:
            return _service(request).delete(name)
        except VectorRouteError as exc:
            return _error(exc.status, str(exc), exc.err_type)

    return router


class SteeringServerMiddleware:
    """Pure ASGI: API key on the paths vLLM's own check skips; fresh engine counters for /metrics."""

    def __init__(self, app, service: SteeringService, api_keys: list[str]):
        self.app = app
        self.service = service
        self.key_hashes = [hashlib.sha256(k.encode()).digest() for k in api_keys]

    def _authorized(self, scope) -> bool:
        scheme, _, token = (Headers(scope=scope).get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(token.encode()).digest()
        ok = False
        for h in self.key_hashes:
            ok |= secrets.compare_digest(digest, h)
        return ok

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope["path"].removeprefix(scope.get("root_path", "")) or "/"
        if (self.key_hashes and scope.get("method") != "OPTIONS" and path not in OPEN_PATHS
                and not self._authorized(scope)):
            return await _error(401, "Unauthorized: missing or wrong API key", "AuthenticationError")(
                scope, receive, send)
        if path.startswith("/metrics"):
            await self.service.refresh_engine_stats()
        return await self.app(scope, receive, send)


def attach(app: FastAPI, service: SteeringService, api_keys: list[str]) -> None:
    """Add the vector routes (ahead of vLLM's catch-all mounts) and the middleware."""
    before = len(app.router.routes)
    app.include_router(build_router())
    ours = app.router.routes[before:]
    app.router.routes[:] = ours + app.router.routes[:before]
    app.openapi_schema = None
    app.state.cast_steering = service
    # vLLM's build_app already built the middleware stack (so add_middleware refuses): put ours
    # outermost and let Starlette rebuild the stack on the first request.
    app.user_middleware.insert(0, Middleware(SteeringServerMiddleware, service=service, api_keys=api_keys))
    app.middleware_stack = None
