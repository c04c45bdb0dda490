"""The vector routes (all under ``/v1``, so vLLM's ``--api-key`` check guards them too).

- ``GET  /v1/steering/vectors``          list (name, source, layers, hidden size, metadata, loaded)
- ``GET  /v1/steering/vectors/{name}``   one vector
- ``POST /v1/steering/vectors``          ``Content-Type: application/json`` ``{"name": ...}``: load a file
  of the vector directories; ``Content-Type: application/octet-stream``: the raw bytes of a
  ``.safetensors`` file, named by ``?name=`` (``&overwrite=true`` to replace), size-limited by
  ``cast_max_upload_bytes``; any other content type: 415
- ``DELETE /v1/steering/vectors/{name}`` 409 while requests in flight use the name

Handlers find the ``SteeringService`` on ``app.state.cast_steering`` (set by the endpoint plugin).
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cast_vllm.serving.service import SteeringService, VectorRouteError

MAX_JSON_BODY_BYTES = 64 * 1024
UPLOAD_TYPE = "application/octet-stream"


def error_response(status: int, message: str, err_type: str = "BadRequestError") -> JSONResponse:
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
        data = await _read_limited(request, service.max_upload_bytes, "upload",
                                   "--max-upload-bytes, hf_overrides cast_max_upload_bytes")
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
            return error_response(exc.status, str(exc), exc.err_type)

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
                                        f"load a file of the vector directory; got {shown}", "UnsupportedMediaTypeError")
        except VectorRouteError as exc:
            return error_response(exc.status, str(exc), exc.err_type)

    @router.delete("/v1/steering/vectors/{name}")
    async def delete_vector(name: str, request: Request):
        try:
            return _service(request).delete(name)
        except VectorRouteError as exc:
            return error_response(exc.status, str(exc), exc.err_type)

    return router
