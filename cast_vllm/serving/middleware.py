"""The one ASGI middleware of the steered server, outermost (ahead of vLLM's CORS and API-key
middleware, so it sees every request first and every response last). It

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
import secrets

from starlette.datastructures import Headers

from cast_vllm.serving import origin, receipts, request_body
from cast_vllm.serving.routes import error_response
from cast_vllm.serving.service import SteeringService

OPEN_PATHS = ("/health", "/ping")


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
            return await error_response(403, why, "PermissionDeniedError")(scope, receive, send)
        if (self.key_hashes and scope.get("method") != "OPTIONS" and path not in OPEN_PATHS
                and not self._authorized(scope)):
            return await error_response(401, "Unauthorized: missing or wrong API key", "AuthenticationError")(
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
            return await error_response(400, str(exc))(scope, receive, send)
        if rewritten is not None:
            body, scope = rewritten, _with_content_length(scope, len(rewritten))
        trackers: list[receipts.ReceiptTracker] = []
        token = receipts.CURRENT.set(trackers)
        try:
            await self.app(scope, _replay(body, receive), receipts.ReceiptSend(send, trackers, path))
        finally:
            receipts.CURRENT.reset(token)
