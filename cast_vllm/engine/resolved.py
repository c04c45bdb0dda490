"""The resolved steering of one admitted request: what admission decided, as a typed object.

Admission (front end) builds a ``ResolvedSteering`` and stores it under ``RESOLVED_KEY`` in
the request's ``extra_args``; the scheduler hook, the block hasher and the worker read it back
with ``resolved_of``. In-process it stays this object; across vLLM's process boundary msgspec
turns it into plain containers, which ``resolved_of`` rebuilds (and caches in place).

A client can never supply it: every key in the ``cast_`` namespace of ``extra_args`` is refused
at admission (``spec.RESERVED_PREFIX``, HTTP 400), and admission always writes the key itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from cast_vllm.spec import PHASE_GENERATED, PHASE_LAST_PROMPT, PHASE_PROMPT, phase_masks

RESOLVED_KEY = "cast_resolved"


@dataclass(frozen=True)
class ResolvedComponent:
    vector: str              # the name the client used
    content_hash: str        # sha256 of the vector's numbers (SteeringVector.content_hash)
    blob: str                # content-addressed file the workers load
    source: str              # the vector file the name resolved to (to rebuild a lost blob)
    scale: float
    layers: tuple[int, ...]
    positions: str
    mode: str

    def canonical(self) -> dict:
        """What the steering depends on (not where the bytes live): the cache and receipt key."""
        return {"hash": self.content_hash, "scale": self.scale, "layers": list(self.layers),
                "positions": self.positions, "mode": self.mode}


@dataclass(frozen=True)
class ResolvedSteering:
    key: str                                  # sha256 of the canonical components
    components: tuple[ResolvedComponent, ...]
    slots: int                                # slot rows the request needs (one per distinct active set)

    def row_of(self, active: tuple[int, ...]) -> tuple[tuple, float]:
        """(row key, token scale) of the components ``active``.

        A slot row holds the components' directions with scales relative to the first non-zero
        one, and each token carries that scale: the same steering at any overall scale (an
        alpha sweep) shares one row. Equal keys mean equal rows; all-zero scales give scale 0,
        which leaves tokens unsteered whatever the row holds.
        """
        row = self._rows.get(active)
        if row is None:   # once per request and active set: the runner asks every step
            comps = [self.components[i] for i in active]
            lead = next((c.scale for c in comps if c.scale != 0), 0.0)
            key = tuple((c.content_hash, c.scale / lead if lead else 1.0, c.layers, c.mode) for c in comps)
            row = self._rows[active] = (key, lead)
        return row

    @cached_property
    def _rows(self) -> dict[tuple[int, ...], tuple[tuple, float]]:
        return {}

    @cached_property
    def budget_key(self) -> tuple:
        """Requests with equal budget keys need the same rows (the scheduler counts them once)."""
        return self.row_of(tuple(range(len(self.components))))[0]

    @property
    def phase_masks(self) -> dict[int, tuple[int, ...]]:
        return phase_masks([c.positions for c in self.components])

    @property
    def phase_dependent(self) -> bool:
        """True when tokens of the request are steered differently depending on their phase."""
        masks = self.phase_masks
        return len(masks) != 3 or len(set(masks.values())) != 1

    @classmethod
    def from_wire(cls, value) -> "ResolvedSteering":
        """Rebuild from what msgspec made of the object (dicts/lists); raises on anything else."""
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            comps = tuple(c if isinstance(c, ResolvedComponent) else ResolvedComponent(
                **{**c, "layers": tuple(c["layers"]), "scale": float(c["scale"])}) for c in value["components"])
            return cls(key=str(value["key"]), components=comps, slots=int(value["slots"]))
        raise TypeError(f"not a resolved steering: {type(value).__name__}")


def resolved_of(sampling_params) -> ResolvedSteering | None:
    """The request's resolved steering (None when unsteered); converts the wire form once."""
    extra = getattr(sampling_params, "extra_args", None) if sampling_params is not None else None
    if not extra:
        return None
    value = extra.get(RESOLVED_KEY)
    if value is None or isinstance(value, ResolvedSteering):
        return value
    resolved = ResolvedSteering.from_wire(value)
    extra[RESOLVED_KEY] = resolved
    return resolved


def token_phase(position: int, prompt_len: int) -> int:
    if position < prompt_len - 1:
        return PHASE_PROMPT
    return PHASE_LAST_PROMPT if position == prompt_len - 1 else PHASE_GENERATED


def block_signature(resolved: ResolvedSteering, prompt_len: int, start: int, end: int) -> tuple:
    """Run-length form of which components steer each token in ``[start, end)``.

    Two requests with the same steering key may share a KV block only where every token in it
    (and, through the hash chain, every earlier token) was steered by the same components.
    """
    masks = resolved.phase_masks
    runs: list[list] = []
    bounds = (prompt_len - 1, prompt_len)  # first LAST_PROMPT token, first GENERATED token
    pos = start
    while pos < end:
        phase = token_phase(pos, prompt_len)
        stop = end if phase == PHASE_GENERATED else min(end, bounds[phase])
        stop = max(stop, pos + 1)
        active = masks.get(phase, ())
        if runs and runs[-1][0] == active:
            runs[-1][1] += stop - pos
        else:
            runs.append([active, stop - pos])
        pos = stop
    return tuple((active, n) for active, n in runs)


def steering_block_keys(sampling_params, prompt_len: int, start: int, end: int) -> tuple:
    """Extra prefix-cache keys of one KV block: the steering key on the first block (the hash
    chain carries it on) and, when steering depends on token phase, the block's signature."""
    resolved = resolved_of(sampling_params)
    if resolved is None:
        return ()
    keys: list[tuple] = [("cast_steering", resolved.key)] if start == 0 else []
    if resolved.phase_dependent:
        keys.append(("cast_phases", block_signature(resolved, prompt_len, start, end)))
    return tuple(keys)
