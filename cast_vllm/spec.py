"""The per-request steering spec (DESIGN.md): parsing, validation and canonical form.

A request carries ``extra_args["steering"]``: a spec object, a list of them, a JSON string of
either, or (over HTTP, where ``vllm_xargs`` values must be flat) a vector name plus the flat
fields ``steering_scale``, ``steering_layers``, ``steering_positions``, ``steering_mode``.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass

from cast_vllm.errors import CastVllmError
from cast_vllm.kernels.modes import MODES

POSITIONS = ("all", "prompt", "generated", "last_prompt")
FLAT_FIELDS = {"steering_scale": "scale", "steering_layers": "layers",
               "steering_positions": "positions", "steering_mode": "mode"}
SPEC_FIELDS = ("vector", "scale", "layers", "positions", "mode")
STEERING_KEYS = ("steering", *FLAT_FIELDS)
RESERVED_PREFIX = "cast_"          # extra_args keys the engine writes itself; never from a client

# Input limits (README "Limits and failure modes"): a spec is small, so anything larger is refused.
MAX_COMPONENTS = 16                # vectors combined in one request
MAX_SPEC_JSON_CHARS = 16_384       # a JSON spec given as a string
MAX_SPEC_DEPTH = 4                 # list -> object -> layers list (+1 spare)
MAX_LAYERS_PER_COMPONENT = 1024

# Token phases a position policy covers. A token is in exactly one phase: an earlier prompt
# token (0), the last prompt token (1), or a token after the prompt (2).
PHASE_PROMPT, PHASE_LAST_PROMPT, PHASE_GENERATED = 0, 1, 2
POSITION_PHASES = {
    "all": (PHASE_PROMPT, PHASE_LAST_PROMPT, PHASE_GENERATED),
    "prompt": (PHASE_PROMPT, PHASE_LAST_PROMPT),
    "generated": (PHASE_GENERATED,),
    "last_prompt": (PHASE_LAST_PROMPT,),
}


class SteeringSpecError(CastVllmError, ValueError):
    """A steering spec that cannot be served; the message names the problem."""


@dataclass(frozen=True)
class SteeringComponent:
    vector: str
    scale: float = 1.0
    layers: tuple[int, ...] | None = None   # None: every layer of the vector
    positions: str = "all"
    mode: str = "add"


def check_keys(extra_args: dict) -> None:
    """Refuse keys that would otherwise be ignored (typos) or that only the engine may write."""
    for key in extra_args:
        if not isinstance(key, str):
            raise SteeringSpecError(f"extra_args key {key!r} is not a string")
        if key.startswith(RESERVED_PREFIX):
            raise SteeringSpecError(f"extra_args key {key!r} is reserved for the engine ('{RESERVED_PREFIX}*')")
        if key in STEERING_KEYS:
            continue
        close = difflib.get_close_matches(key, STEERING_KEYS, n=1, cutoff=0.8)
        if close or key.lower().startswith("steer"):
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SteeringSpecError(f"unknown steering key {key!r}{hint} (steering keys: {list(STEERING_KEYS)})")


def parse_steering(extra_args: dict | None) -> list[SteeringComponent] | None:
    """Return the request's steering components, or None when it is not steered."""
    if extra_args:
        check_keys(extra_args)
    if not extra_args or extra_args.get("steering") is None:
        stray = sorted(k for k in (extra_args or {}) if k in FLAT_FIELDS)
        if stray:
            raise SteeringSpecError(f"{', '.join(stray)} given without 'steering' (the vector name)")
        return None
    raw = extra_args["steering"]
    flat = {FLAT_FIELDS[k]: v for k, v in extra_args.items() if k in FLAT_FIELDS}
    if isinstance(raw, str):
        text = raw.strip()
        if text[:1] in "[{":
            raw = _load_json(text)
        else:
            raw = {"vector": text}
    if isinstance(raw, dict):
        items = [raw]
    elif isinstance(raw, list):
        items = raw
    else:
        raise SteeringSpecError(f"steering must be a vector name, an object or a list, got {type(raw).__name__}")
    if not items:
        raise SteeringSpecError("steering list is empty")
    if len(items) > MAX_COMPONENTS:
        raise SteeringSpecError(f"steering combines {len(items)} vectors; the limit is {MAX_COMPONENTS}")
    if flat and (len(items) != 1 or not isinstance(items[0], dict) or set(flat) & set(items[0])):
        raise SteeringSpecError(
            "flat steering_* fields apply to a single vector given by name; put them inside the JSON spec instead"
        )
    return [_component({**item, **flat} if flat else item, i) for i, item in enumerate(items)]


def _show(value) -> str:
    """A value for an error message, cut short: messages echo client input."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _load_json(text: str):
    if len(text) > MAX_SPEC_JSON_CHARS:
        raise SteeringSpecError(f"steering JSON has {len(text)} characters; the limit is {MAX_SPEC_JSON_CHARS}")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise SteeringSpecError(f"steering is not valid JSON: {exc}") from None
    if _depth(value) > MAX_SPEC_DEPTH:
        raise SteeringSpecError(f"steering JSON is nested deeper than {MAX_SPEC_DEPTH} levels")
    return value


def _depth(value, level: int = 1) -> int:
    if level > MAX_SPEC_DEPTH:
        return level
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return max((_depth(c, level + 1) for c in children), default=level)


def _component(item, index: int) -> SteeringComponent:
    where = f"steering[{index}]"
    if not isinstance(item, dict):
        raise SteeringSpecError(f"{where} must be an object, got {type(item).__name__}")
    unknown = sorted(set(item) - set(SPEC_FIELDS))
    if unknown:
        raise SteeringSpecError(f"{where} has unknown field(s) {_show(unknown)}; allowed: {list(SPEC_FIELDS)}")
    vector = item.get("vector")
    if not isinstance(vector, str) or not vector:
        raise SteeringSpecError(f"{where}.vector (the vector name) is required")
    scale = item.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float, str)):
        raise SteeringSpecError(f"{where}.scale must be a number, got {_show(scale)}")
    try:
        scale = float(scale)
    except ValueError:
        raise SteeringSpecError(f"{where}.scale must be a number, got {_show(scale)}") from None
    if not math.isfinite(scale):
        raise SteeringSpecError(f"{where}.scale must be finite, got {_show(scale)}")
    layers = item.get("layers")
    if layers is not None:
        if isinstance(layers, str):
            try:
                layers = _load_json(layers)
            except SteeringSpecError:
                raise SteeringSpecError(f"{where}.layers must be a list of ints, got {layers[:80]!r}") from None
        if isinstance(layers, int) and not isinstance(layers, bool):
            layers = [layers]
        if (not isinstance(layers, list) or not layers
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers)):
            raise SteeringSpecError(f"{where}.layers must be a non-empty list of ints, got {_show(layers)}")
        if len(layers) > MAX_LAYERS_PER_COMPONENT:
            raise SteeringSpecError(f"{where}.layers lists {len(layers)} layers; the limit is {MAX_LAYERS_PER_COMPONENT}")
        if len(set(layers)) != len(layers):
            raise SteeringSpecError(f"{where}.layers has duplicates: {layers}")
        layers = tuple(sorted(layers))
    positions = item.get("positions", "all")
    if positions not in POSITIONS:
        raise SteeringSpecError(f"{where}.positions must be one of {list(POSITIONS)}, got {_show(positions)}")
    mode = item.get("mode", "add")
    if mode not in MODES:
        raise SteeringSpecError(f"{where}.mode must be one of {list(MODES)}, got {_show(mode)}")
    return SteeringComponent(vector=vector, scale=scale, layers=layers, positions=positions, mode=mode)


def phase_masks(positions: list[str]) -> dict[int, tuple[int, ...]]:
    """For each token phase, which components (by index) steer it; phases no component covers are left out."""
    masks = {}
    for phase in (PHASE_PROMPT, PHASE_LAST_PROMPT, PHASE_GENERATED):
        active = tuple(i for i, p in enumerate(positions) if phase in POSITION_PHASES[p])
        if active:
            masks[phase] = active
    return masks


def slots_needed(positions: list[str]) -> int:
    """Distinct slot rows one request needs: one per distinct set of active components."""
    return len(set(phase_masks(positions).values()))
