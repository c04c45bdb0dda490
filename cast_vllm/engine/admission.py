"""Admission (front-end process): validate each request's steering spec before anything is
scheduled, resolve vector names to content-addressed blobs, and salt the prefix cache.

A bad spec raises ``ValueError`` here (HTTP 400 on the server); it never reaches a worker.
"""

from __future__ import annotations

import hashlib
import json
import logging

from cast_vllm.engine.settings import SteeringSettings
from cast_vllm.spec import SteeringSpecError, parse_steering, slots_needed
from cast_vllm.store import VectorStore
from cast_vllm.vectors import VectorFileError

logger = logging.getLogger(__name__)
RESOLVED_KEY = "cast_resolved"


class Admission:
    """Per front end: one vector store, the model's shape, and the slot budget."""

    def __init__(self, settings: SteeringSettings, hidden_size: int, num_layers: int):
        self.settings = settings
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.store = VectorStore(settings.vector_dirs)

    def resolve(self, extra_args: dict | None) -> dict | None:
        """The request's canonical steering (None if unsteered); raises ValueError on a bad spec."""
        try:
            components = parse_steering(extra_args)
            if components is None:
                return None
            resolved = []
            layer_modes: dict[int, str] = {}
            for i, comp in enumerate(components):
                stored = self.store.get(comp.vector)
                stored.vector.check_against_model(self.hidden_size, self.num_layers, f"vector {comp.vector!r}")
                layers = comp.layers if comp.layers is not None else tuple(stored.vector.layers)
                missing = [layer for layer in layers if layer not in stored.vector.directions]
                out_of_range = [layer for layer in layers if not 0 <= layer < self.num_layers]
                if out_of_range:
                    raise SteeringSpecError(
                        f"steering[{i}].layers {out_of_range} out of range: the model has {self.num_layers} "
                        f"layers (0..{self.num_layers - 1})")
                if missing:
                    raise SteeringSpecError(
                        f"steering[{i}].layers {missing} are not in vector {comp.vector!r} "
                        f"(it has layers {stored.vector.layers})")
                if abs(comp.scale) > self.settings.max_scale:
                    raise SteeringSpecError(
                        f"steering[{i}].scale {comp.scale} exceeds the server limit of {self.settings.max_scale}")
                for layer in layers:
                    if layer_modes.setdefault(layer, comp.mode) != comp.mode:
                        raise SteeringSpecError(
                            f"steering[{i}] uses mode {comp.mode!r} at layer {layer}, where another vector "
                            f"in the request uses {layer_modes[layer]!r}; combined vectors must agree per layer")
                resolved.append({"hash": stored.content_hash, "blob": str(stored.blob), "scale": comp.scale,
                                 "layers": list(layers), "positions": comp.positions, "mode": comp.mode})
            need = slots_needed([c["positions"] for c in resolved])
            if need > self.settings.max_steering_vectors:
                raise SteeringSpecError(
                    f"this request needs {need} steering slots but the engine has max_steering_vectors="
                    f"{self.settings.max_steering_vectors}")
        except (SteeringSpecError, VectorFileError) as exc:
            raise SteeringSpecError(f"invalid steering: {exc}") from None
        canonical = [{k: v for k, v in c.items() if k != "blob"} for c in resolved]
        key = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
        return {"key": key, "components": resolved, "slots": need}


def salt_for(resolved: dict | None, salt: str | None) -> str | None:
    """Prefix-cache salt: different steering never shares KV blocks; unsteered keeps its salt."""
    if resolved is None:
        return salt
    return f"cast-{resolved['key'][:40]}" + (f"-{salt}" if salt else "")
