"""One line of a batch input file: ``BatchRequest``, and reading a whole file with every
problem named by its line before any engine starts.

A line is a JSON object::

    {"id": "q1",                                   # optional; default: the line number
     "prompt": "text"  |  "messages": [{"role": "user", "content": "..."}],
     "sampling": {"max_tokens": 32, "temperature": 0, "seed": 1, ...},   # optional
     "steering": {"vector": "v", "scale": 4}}      # optional: the DESIGN.md spec (or a list)

Unknown keys are refused rather than ignored. Sampling keys are vLLM's ``SamplingParams`` fields
listed in ``SAMPLING_FIELDS``; the command line gives defaults a line may override. Steering is
checked by the engine's admission when the request runs (a bad one becomes that line's error).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cast_vllm.errors import CastVllmError

SAMPLING_FIELDS = ("max_tokens", "min_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "n", "stop",
                   "stop_token_ids", "ignore_eos", "presence_penalty", "frequency_penalty", "repetition_penalty",
                   "logprobs")
LINE_KEYS = ("id", "prompt", "messages", "sampling", "steering")


class BatchInputError(CastVllmError, ValueError):
    """An input file that cannot run; the message names the line and the problem."""


@dataclass(frozen=True)
class BatchRequest:
    index: int                       # 0-based position in the input (the output keeps this order)
    id: str
    prompt: str | None = None
    messages: tuple[dict, ...] | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    steering: Any = None

    def sampling_params(self, defaults: dict[str, Any]):
        """vLLM ``SamplingParams`` of this line (its own keys over ``defaults``), steering in
        ``extra_args``."""
        from vllm import SamplingParams

        extra = None if self.steering is None else {"steering": self.steering}
        return SamplingParams(**{**defaults, **self.sampling}, extra_args=extra)


def parse_line(text: str, index: int, where: str, defaults: dict[str, Any]) -> BatchRequest:
    """One input line -> ``BatchRequest``; ``BatchInputError`` naming ``where`` otherwise."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BatchInputError(f"{where}: not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise BatchInputError(f"{where}: a line must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(LINE_KEYS))
    if unknown:
        raise BatchInputError(f"{where}: unknown key(s) {unknown}; a line has {', '.join(LINE_KEYS)}")
    has_prompt, has_messages = obj.get("prompt") is not None, obj.get("messages") is not None
    if has_prompt == has_messages:
        raise BatchInputError(f"{where}: give exactly one of 'prompt' (text) and 'messages' (chat)")
    if has_prompt and not isinstance(obj["prompt"], str):
        raise BatchInputError(f"{where}: 'prompt' must be a string")
    messages = None
    if has_messages:
        msgs = obj["messages"]
        if (not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs)):
            raise BatchInputError(f"{where}: 'messages' must be a non-empty list of {{'role': str, 'content': str}}")
        messages = tuple(dict(m) for m in msgs)
    sampling = obj.get("sampling")
    sampling = {} if sampling is None else sampling
    if not isinstance(sampling, dict):
        raise BatchInputError(f"{where}: 'sampling' must be an object")
    bad = sorted(set(sampling) - set(SAMPLING_FIELDS))
    if bad:
        raise BatchInputError(f"{where}: unknown sampling key(s) {bad}; allowed: {', '.join(SAMPLING_FIELDS)}")
    rid = obj.get("id", index)
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise BatchInputError(f"{where}: 'id' must be a string or an integer")
    request = BatchRequest(index, str(rid), obj.get("prompt"), messages, dict(sampling), obj.get("steering"))
    try:
        request.sampling_params(defaults)       # vLLM's own checks (ranges, types), now rather than mid-run
    except Exception as exc:   # TypeError, ValueError, vLLM's VLLMValidationError: all name the field
        raise BatchInputError(f"{where}: bad sampling: {exc}") from None
    return request


def read_requests(path: str | Path, defaults: dict[str, Any]) -> list[BatchRequest]:
    """Every request of a JSONL file (blank lines skipped); all problems reported at once."""
    path = Path(path)
    if not path.is_file():
        raise BatchInputError(f"input file {path} does not exist")
    requests: list[BatchRequest] = []
    problems: list[str] = []
    ids: dict[str, int] = {}
    with path.open(encoding="utf-8", errors="strict") as f:
        try:
            lines = list(f)
        except UnicodeDecodeError as exc:
            raise BatchInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for lineno, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            request = parse_line(text, len(requests), f"{path}:{lineno}", defaults)
        except BatchInputError as exc:
            problems.append(str(exc))
            continue
        if request.id in ids:
            problems.append(f"{path}:{lineno}: id {request.id!r} repeats line {ids[request.id]}")
        ids.setdefault(request.id, lineno)
        requests.append(request)
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise BatchInputError(f"{len(problems)} bad line(s) in {path}:\n  {shown}")
    if not requests:
        raise BatchInputError(f"{path} holds no requests")
    return requests
