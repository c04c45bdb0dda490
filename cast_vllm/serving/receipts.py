"""Steering receipts over HTTP: proof, on every steered response, of what was applied.

The middleware opens a receipt list for each ``/v1/completions`` or ``/v1/chat/completions``
request (``CURRENT``, a ``ContextVar``: the handler and the tasks it starts see the same list).
The service's ``generate`` wrapper appends one ``ReceiptTracker`` per steered engine request,
in the order the handler creates them (prompt order), and feeds it every ``RequestOutput``.
``ReceiptSend`` then writes the receipts into the response:

- header ``x-cast-steering``: a JSON list, one ``SteeringReceipt.header_value()`` per prompt
  (at most ``MAX_HEADER_BYTES``: for a large batch the header lists the leading prompts that fit
  and ``x-cast-steering-omitted`` says how many more the body carries; HTTP clients refuse
  oversized header blocks, h11 at 16 KiB);
- non-streaming JSON: a top-level ``"steering": [receipt.to_dict(), ...]``;
- streaming (SSE): one extra chunk ``{"id", "object", "created", "model", "choices": [],
  "steering": [...]}`` just before ``data: [DONE]``.

A response with no steered engine request (or not a 200) passes through untouched.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from dataclasses import dataclass, field

from vllm.sampling_params import RequestOutputKind

from cast_vllm.engine.resolved import ResolvedSteering
from cast_vllm.receipt import RECEIPT_HEADER, SteeringReceipt

logger = logging.getLogger(__name__)

MAX_HEADER_BYTES = 8192
OMITTED_HEADER = RECEIPT_HEADER + "-omitted"
CURRENT: ContextVar[list["ReceiptTracker"] | None] = ContextVar("cast_steering_receipts", default=None)
DONE_EVENT = b"data: [DONE]"
STREAM_OBJECTS = {"/v1/completions": "text_completion", "/v1/chat/completions": "chat.completion.chunk"}


@dataclass
class ReceiptTracker:
    """One steered engine request: its resolved steering and its token counts so far."""

    resolved: ResolvedSteering
    prompt_tokens: int
    delta: bool                                   # outputs carry new tokens only (streaming)
    output_tokens: list[int] = field(default_factory=list)

    @classmethod
    def start(cls, resolved: ResolvedSteering, prompt_tokens: int, sampling_params) -> "ReceiptTracker":
        n = max(int(getattr(sampling_params, "n", 1) or 1), 1)
        delta = getattr(sampling_params, "output_kind", None) == RequestOutputKind.DELTA
        return cls(resolved, prompt_tokens, delta, [0] * n)

    def observe(self, output) -> None:
        """Count tokens from one ``RequestOutput`` (cumulative or delta, any choice index)."""
        if output.prompt_token_ids is not None:
            self.prompt_tokens = len(output.prompt_token_ids)
        for choice in output.outputs:
            if choice.index >= len(self.output_tokens):
                self.output_tokens.extend([0] * (choice.index + 1 - len(self.output_tokens)))
            n = len(choice.token_ids)
            self.output_tokens[choice.index] = self.output_tokens[choice.index] + n if self.delta else n

    def receipt(self) -> SteeringReceipt:
        return SteeringReceipt.build(self.resolved, self.prompt_tokens, tuple(self.output_tokens))


def track(resolved: ResolvedSteering, prompt_tokens: int, sampling_params) -> ReceiptTracker | None:
    """A tracker on the current HTTP request's receipt list; None outside such a request."""
    receipts = CURRENT.get()
    if receipts is None:
        return None
    tracker = ReceiptTracker.start(resolved, prompt_tokens, sampling_params)
    receipts.append(tracker)
    return tracker


def receipt_headers(trackers: list[ReceiptTracker]) -> dict[bytes, bytes]:
    """``x-cast-steering`` (the leading receipts that fit) and, if some did not, ``-omitted``."""
    entries, size = [], 2
    for tracker in trackers:
        entry = tracker.receipt().header_value()
        if size + len(entry) + 1 > MAX_HEADER_BYTES:
            break
        entries.append(entry)
        size += len(entry) + 1
    headers = {RECEIPT_HEADER.encode(): ("[" + ",".join(entries) + "]").encode("latin-1")}
    if len(entries) < len(trackers):
        headers[OMITTED_HEADER.encode()] = str(len(trackers) - len(entries)).encode()
    return headers


def body_value(trackers: list[ReceiptTracker]) -> list[dict]:
    return [t.receipt().to_dict() for t in trackers]


class ReceiptSend:
    """ASGI ``send`` wrapper that adds the receipts of ``trackers`` to a steered 200 response."""

    def __init__(self, send, trackers: list[ReceiptTracker], path: str):
        self.send = send
        self.trackers = trackers
        self.stream_object = STREAM_OBJECTS.get(path, "text_completion")
        self.mode = None                 # "pass", "json" or "sse", decided at the response start
        self.start_message: dict | None = None
        self.body = bytearray()
        self.stream_meta: dict | None = None

    async def __call__(self, message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            return await self._start(message)
        if kind != "http.response.body" or self.mode == "pass":
            return await self.send(message)
        if self.mode == "json":
            return await self._json_body(message)
        return await self._sse_body(message)

    async def _start(self, message) -> None:
        content_type = _header(message, b"content-type")
        if not self.trackers or message["status"] != 200:
            self.mode = "pass"
        elif content_type.startswith(b"application/json"):
            self.mode, self.start_message = "json", message
            return  # sent with the rewritten body (its length changes)
        elif content_type.startswith(b"text/event-stream"):
            self.mode = "sse"
            message = _with_headers(message, receipt_headers(self.trackers))
        else:
            self.mode = "pass"
        await self.send(message)

    async def _json_body(self, message) -> None:
        self.body += message.get("body", b"")
        if message.get("more_body"):
            return
        body = bytes(self.body)
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            data["steering"] = body_value(self.trackers)
            try:  # encoded as Starlette's JSONResponse encodes
                body = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
            except ValueError as exc:
                logger.warning("steered response sent without its receipt field: %s", exc)
        else:
            logger.warning("steered response body is not a JSON object; sent without its receipt field")
        start = _with_headers(self.start_message, {**receipt_headers(self.trackers),
                                                   b"content-length": str(len(body)).encode()})
        await self.send(start)
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _sse_body(self, message) -> None:
        body = message.get("body", b"")
        if self.stream_meta is None and body.startswith(b"data: {"):
            self.stream_meta = _stream_meta(body)
        done_at = body.find(DONE_EVENT)
        if done_at >= 0 and (done_at == 0 or body[done_at - 2:done_at] == b"\n\n"):
            message = {**message, "body": body[:done_at] + self._receipt_event() + body[done_at:]}
        await self.send(message)

    def _receipt_event(self) -> bytes:
        meta = self.stream_meta or {}
        chunk = {"id": meta.get("id"), "object": meta.get("object", self.stream_object),
                 "created": meta.get("created"), "model": meta.get("model"), "choices": [],
                 "steering": body_value(self.trackers)}
        return b"data: " + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def _stream_meta(event: bytes) -> dict | None:
    """id / object / created / model of the stream's first data event."""
    line = event.split(b"\n", 1)[0][len(b"data: "):]
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict) or "error" in data:
        return None
    return {k: data.get(k) for k in ("id", "object", "created", "model")}


def _header(message, name: bytes) -> bytes:
    for key, value in message.get("headers", ()):
        if key.lower() == name:
            return value.lower()
    return b""


def _with_headers(message, headers: dict[bytes, bytes]) -> dict:
    kept = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in headers]
    return {**message, "headers": kept + list(headers.items())}
