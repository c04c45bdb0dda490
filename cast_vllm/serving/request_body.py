"""Generation request bodies that would otherwise be answered unsteered without a word.

Two cases, for ``POST /v1/completions`` and ``POST /v1/chat/completions``:

- a top-level ``"steering"`` field (EasySteer style). vLLM keeps unknown top-level fields and
  ignores them, so the request would run unsteered. It means the same spec as
  ``vllm_xargs.steering`` and is moved there (an object or list as its JSON string, since
  ``vllm_xargs`` values must be flat); giving both is refused.
- ``use_beam_search`` with steering: vLLM's beam search builds its own sampling parameters
  without ``extra_args``, so the answer would be unsteered. Refused.

Only a body that mentions ``steering`` or ``beam`` (or uses ``\\u`` escapes, which could spell
either) is parsed; every other body goes through as it came.
"""

from __future__ import annotations

import json

from cast_vllm.errors import CastVllmError

GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
_TRIGGERS = (b"steering", b"beam", b"\\u")
_TRUE_STRINGS = frozenset({"1", "true", "t", "yes", "y", "on"})  # what pydantic reads as True


class BodyRefused(CastVllmError, ValueError):
    """A generation request refused before vLLM sees it (HTTP 400); the message says why."""


def needs_parsing(body: bytes) -> bool:
    return any(token in body for token in _TRIGGERS)


def rewrite(body: bytes) -> bytes | None:
    """The body to forward instead of ``body`` (None: forward it unchanged); raises ``BodyRefused``."""
    if not needs_parsing(body):
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None  # vLLM reports malformed JSON itself
    if not isinstance(data, dict):
        return None
    changed = "steering" in data
    if changed:
        _move_top_level_steering(data)
    if _truthy(data.get("use_beam_search")) and _steered(data.get("vllm_xargs")):
        raise BodyRefused("beam search cannot be steered: vLLM's beam search drops vllm_xargs, so the answer "
                          "would be unsteered; remove use_beam_search or the steering")
    return json.dumps(data).encode() if changed else None


def _move_top_level_steering(data: dict) -> None:
    spec = data.pop("steering")
    if spec is None:
        return
    xargs = data.get("vllm_xargs")
    if xargs is None:
        xargs = {}
    if not isinstance(xargs, dict):
        raise BodyRefused("vllm_xargs must be an object")
    if "steering" in xargs:
        raise BodyRefused("steering given twice: use the top-level 'steering' field or vllm_xargs.steering, "
                          "not both")
    xargs["steering"] = json.dumps(spec) if isinstance(spec, (dict, list)) else spec
    data["vllm_xargs"] = xargs


def _steered(xargs) -> bool:
    return isinstance(xargs, dict) and any(isinstance(k, str) and k.startswith("steering") for k in xargs)


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in _TRUE_STRINGS
    return bool(value) if isinstance(value, (bool, int, float)) else False
