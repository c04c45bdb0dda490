"""Arithmetic on steering vectors: weighted sums per layer, the operations repeng users know
(``a + b``, ``a - b``, ``2 * a``, ``a / 2``, ``-a``), behind ``SteeringVector``'s operators and
``cast-vllm vectors combine``.

A result records where it came from: ``method="combine"`` and ``components``, a JSON list of
``{"weight", "content_hash", ...}``, one entry per original vector. Combining a combined vector
expands its components, so ``(a + b) * 2`` and ``2 * a + 2 * b`` record the same thing.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
from typing import Iterable

import torch

from cast_vllm.vectors import SteeringVector, VectorFileError, check_metadata

logger = logging.getLogger(__name__)

#: what a component entry keeps of its vector's metadata, besides weight and content hash
COMPONENT_KEYS = ("source_file", "model", "method", "source_task")
#: metadata an output keeps when every input agrees on it
SHARED_KEYS = ("model", "model_type", "num_layers")


def check_weight(weight, where: str = "weight") -> float:
    """A weight is a finite real number (bool is refused: ``a * True`` is a typo, not a scale)."""
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise VectorFileError(f"{where} must be a real number, got {type(weight).__name__}")
    weight = float(weight)
    if not math.isfinite(weight):
        raise VectorFileError(f"{where} must be finite, got {weight}")
    return weight


def combine(terms: Iterable[tuple[SteeringVector, float]]) -> SteeringVector:
    """``sum(w * v)`` per layer; a layer present in only some vectors sums over those that have
    it. Accumulated in float64 and rounded to float32 once, so the order of terms barely matters."""
    terms = [(v, check_weight(w, f"weight of vector {i}")) for i, (v, w) in enumerate(terms)]
    if not terms:
        raise VectorFileError("combine needs at least one vector")
    for i, (v, _) in enumerate(terms):
        if not isinstance(v, SteeringVector):
            raise VectorFileError(f"vector {i} is a {type(v).__name__}, not a SteeringVector")
    sizes = sorted({v.hidden_size for v, _ in terms})
    if len(sizes) > 1:
        raise VectorFileError(f"cannot combine vectors of different hidden sizes {sizes}: they belong to "
                              "different models")
    acc: dict[int, torch.Tensor] = {}
    for v, w in terms:
        for layer, t in v.directions.items():
            x = t.double() * w
            acc[layer] = acc[layer] + x if layer in acc else x
    meta = check_metadata(_combined_metadata(terms), "combined vector")
    try:
        return SteeringVector({layer: x.float() for layer, x in acc.items()}, meta)
    except VectorFileError as exc:   # float32 overflow: 1e38 * v
        raise VectorFileError(f"combined vector: {exc}") from None


def components_of(vector: SteeringVector) -> list[dict]:
    """The recorded components of a combined vector; a plain vector is its own single component."""
    if vector.metadata.get("method") == "combine":
        try:
            comps = json.loads(vector.metadata["components"])
            if (isinstance(comps, list) and comps and all(
                    isinstance(c, dict) and isinstance(c.get("content_hash"), str)
                    and isinstance(c.get("weight"), (int, float)) and math.isfinite(c["weight"]) for c in comps)):
                return comps
        except (KeyError, ValueError):
            pass
        logger.debug("vector with method=combine but unreadable components; recorded as one component")
    rec = {"weight": 1.0, "content_hash": vector.content_hash()}
    rec.update({k: vector.metadata[k] for k in COMPONENT_KEYS if k in vector.metadata})
    return [rec]


def _combined_metadata(terms: list[tuple[SteeringVector, float]]) -> dict[str, str]:
    records: dict[tuple, dict] = {}
    for v, w in terms:
        for comp in components_of(v):
            key = (comp["content_hash"], comp.get("source_file"))   # the same numbers from two files: two entries
            if key in records:
                records[key]["weight"] += comp["weight"] * w
            else:
                records[key] = {**comp, "weight": comp["weight"] * w}
    meta = {"method": "combine", "components": json.dumps(list(records.values()), separators=(",", ":"))}
    for key in SHARED_KEYS:
        values = {v.metadata.get(key) for v, _ in terms}
        if len(values) == 1 and None not in values:
            meta[key] = values.pop()
    models = sorted({v.metadata.get("model") for v, _ in terms} - {None, "unknown"})
    if len(models) > 1:   # repeng warns on mismatched model types too; hidden sizes already match
        logger.warning("combining vectors made on different models %s; the result's model is unknown", models)
    return meta
