"""Browsers must not drive the steering routes from another site.

vLLM answers every route with permissive CORS (``--allowed-origins`` defaults to ``*``), and a
server without ``--api-key`` has nothing else between a web page the operator visits and
``POST /v1/steering/vectors``. For the steering routes (``/v1/steering/...``) the middleware
therefore refuses preflights, strips ``Access-Control-*`` response headers, and refuses any
non-GET request whose ``Origin`` is not the server itself (403). Clients that are not
browsers send no ``Origin`` and are unaffected.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers

STEERING_PREFIX = "/v1/steering"
SAFE_METHODS = frozenset({"GET", "HEAD"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def is_steering_path(path: str) -> bool:
    return path == STEERING_PREFIX or path.startswith(STEERING_PREFIX + "/")


def refusal(scope) -> str | None:
    """Why this request to a steering route is refused (None: allowed)."""
    method = scope.get("method", "GET")
    if method == "OPTIONS":
        return "cross-origin requests to steering routes are refused (no CORS preflight)"
    if method in SAFE_METHODS:
        return None
    origin = Headers(scope=scope).get("origin")
    if origin is not None and not same_origin(origin, scope):
        return "cross-origin requests to steering routes are refused"
    return None


def same_origin(origin: str, scope) -> bool:
    """``Origin`` names the host and port the request was sent to (the ``Host`` header)."""
    scheme = scope.get("scheme", "http")
    host = Headers(scope=scope).get("host")
    if not host:
        return False
    mine = _host_port(f"{scheme}://{host}")
    theirs = _host_port(origin.strip())
    return mine is not None and mine == theirs


def _host_port(url: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname.lower(), port


def without_cors_headers(send):
    """``send`` that drops every ``Access-Control-*`` header from the response start."""

    async def send_wrapper(message):
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", ()) if not k.lower().startswith(b"access-control-")]
            message = {**message, "headers": headers}
        await send(message)

    return send_wrapper
