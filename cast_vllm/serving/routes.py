"""HTTP surface added to vLLM's app: the vector routes and one ASGI middleware.

Routes (all under ``/v1``, so vLLM's ``--api-key`` check guards them too):

- ``GET  /v1/steering/vectors``          list (name, source, layers, hidden size, metadata, loaded)
- ``GET  /v1/steering/vectors/{name}``   one vector
- ``POST /v1/steering/vectors``          ``Content-Type: application/json`` ``{"name": ...}``: load a file
  of the vector directory; ``Content-Type: application/octet-stream``: the raw bytes of a
  ``.safetensors`` file, named by ``?name=`` (``&overwrite=true`` to replace), size-limited by
  ``--max-upload-bytes``; any other content type: 415
- ``DELETE /v1/steering/vectors/{name}`` 409 while requests in flight use the name

The middleware (outermost, ahead of vLLM's CORS and API-key middleware):

- applies the API key to every path vLLM leaves open (``/metrics``, ``/tokenize``, ``/version``,
  ...), except the liveness probes ``/health`` and ``/ping``;
- keeps browsers of other sites off the steering routes (``origin``);
- moves a top-level ``steering`` field into ``vllm_xargs`` and refuses steered beam search
  (``request_body``);
- adds the steering receipt to steered completion responses (``receipts``);
- refreshes the engine-side steering counters before ``/metrics`` is served.
"""

from __future__ import annotations

import hashlib
import json
import secrets

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.middleware import Middleware

from cast_vllm.serving import origin, receipts, request_body
from cast_vllm.serving.service import SteeringService, VectorRouteError

OPEN_PATHS = ("/health", "/ping")
MAX_JSON_BODY_BYTES = 64 * 1024
UPLOAD_TYPE = "application/octet-stream"


def _error(status: int, message: str, err_type: str = "BadRequestError") -> JSONResponse:
    """Same shape as vLLM's (and OpenAI's) error bodies."""
    return JSONResponse({"error": {"message": message, "type": err_type, "param": None, "code": status}},
                        status_code=status)


def _service(request: Request) -> SteeringService:
    return request.app.state.cast_steering


async def _read_limited(request: Request, limit: int, what: str, option: str) -> bytes:
    """The body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise VectorRouteError(413, f"{what} of {declared} bytes exceeds the limit of {limit} bytes ({option})",
                               "PayloadTooLargeError")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise VectorRouteError(413, f"{what} exceeds the limit of {limit} bytes ({option})",
                                   "PayloadTooLargeError")
    return bytes(body)


async def _load_by_name(request: Request, service: SteeringService) -> JSONResponse:
    raw = await _read_limited(request, MAX_JSON_BODY_BYTES, "JSON body", "fixed")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise VectorRouteError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise VectorRouteError(400, 'JSON body must be {"name": "<vector in the vector directory>"}; '
                                    f"to upload, send the .safetensors bytes as the body (Content-Type: "
                                    f"{UPLOAD_TYPE}) with ?name=")
    return JSONResponse(service.load(body["name"]), status_code=200)


async def _upload(request: Request, service: SteeringService) -> JSONResponse:
    name = request.query_params.get("name")
    if not name:
        raise VectorRouteError(400, "upload needs the vector name as a query parameter: ?name=<name>")
    overwrite = request.query_params.get("overwrite", "false").lower() in ("1", "true", "yes")
    service.check_upload(name, overwrite)  # before reading the body: names and counts are cheap
    with service.upload_slot():
        data = await _read_limited(request, service.max_upload_bytes, "upload", "--max-upload-bytes")
        return JSONResponse(service.upload(name, data, overwrite=overwrite), status_code=201)


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


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
        content_type = _content_type(request)
        try:
            if content_type == "application/json":
                return await _load_by_name(request, service)
            if content_type == UPLOAD_TYPE:
                return await _upload(request, service)
            shown = content_type or "none"
            hint = " (multipart uploads are not accepted)" if content_type.startswith("multipart/") else ""
            raise VectorRouteError(415, f"uploads need Content-Type: {UPLOAD_TYPE} with the raw .safetensors "
                                        f"bytes as the body{hint}, or application/json {{\"name\": ...}} to "
                                        f"load a file of --vector-dir; got {shown}", "UnsupportedMediaTypeError")
        except VectorRouteError as exc:
            return _error(exc.status, str(exc), exc.err_type)

    @router.delete("/v1/steering/vectors/{name}")
    async def delete_vector(name: str, request: Request):
        try:
            return _service(request).delete(name)
        except VectorRouteError as exc:
            return _error(exc.status, str(exc), exc.err_type)

    return router


async def _read_body(receive) -> bytes | None:
    """The whole request body (None if the client went away first)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    """``receive`` that hands out ``body`` once, then defers to the client's (disconnects)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _with_content_length(scope, length: int):
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}


class SteeringServerMiddleware:
    """Pure ASGI, outermost: API key, steering-route origin checks, body rewrite, receipts, counters."""

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
        steering_route = origin.is_steering_path(path)
        if steering_route and (why := origin.refusal(scope)):
            return await _error(403, why, "PermissionDeniedError")(scope, receive, send)
        if (self.key_hashes and scope.get("method") != "OPTIONS" and path not in OPEN_PATHS
                and not self._authorized(scope)):
            return await _error(401, "Unauthorized: missing or wrong API key", "AuthenticationError")(
                scope, receive, send)
        if path.startswith("/metrics"):
            await self.service.refresh_engine_stats()
        if steering_route:
            return await self.app(scope, receive, origin.without_cors_headers(send))
        if scope["type"] == "http" and scope.get("method") == "POST" and path in request_body.GENERATION_PATHS:
            return await self._generation(scope, receive, send, path)
        return await self.app(scope, receive, send)

    async def _generation(self, scope, receive, send, path: str):
        """Forward a completion request with its body checked, and its receipts added to the response."""
        body = await _read_body(receive)
        if body is None:
            return
        try:
            rewritten = request_body.rewrite(body)
        except request_body.BodyRefused as exc:
            self.service.rejected_requests += 1
            return await _error(400, str(exc))(scope, receive, send)
        if rewritten is not None:
            body, scope = rewritten, _with_content_length(scope, len(rewritten))
        trackers: list[receipts.ReceiptTracker] = []
        token = receipts.CURRENT.set(trackers)
        try:
            await self.app(scope, _replay(body, receive), receipts.ReceiptSend(send, trackers, path))
        finally:
            receipts.CURRENT.reset(token)


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
