"""Admission (front-end process): validate each request's steering spec before anything is
scheduled and resolve vector names to content-addressed blobs.

Every request passes here, steered or not, so a client key in the engine's reserved namespace
or a misspelt steering key is refused instead of being ignored. A bad spec raises
``ValueError`` (HTTP 400 on the server); it never reaches a worker.
"""

from __future__ import annotations

import hashlib
import json

from cast_vllm.engine.resolved import ResolvedComponent, ResolvedSteering
from cast_vllm.engine.settings import SteeringSettings
from cast_vllm.spec import SteeringSpecError, parse_steering, slots_needed
from cast_vllm.store import VectorStore
from cast_vllm.vectors import VectorFileError


class Admission:
    """Per front end: one vector store, the model's shape, and the slot budget."""

    def __init__(self, settings: SteeringSettings, hidden_size: int, num_layers: int):
        self.settings = settings
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.store = VectorStore(settings.vector_dirs)

    def resolve(self, extra_args: dict | None) -> ResolvedSteering | None:
        """The request's canonical steering (None if unsteered); raises ValueError on a bad spec."""
        try:
            components = parse_steering(extra_args)
            if components is None:
                return None
            resolved = tuple(self._component(i, comp) for i, comp in enumerate(components))
            _check_layer_modes(resolved)
            need = slots_needed([c.positions for c in resolved])
            if need > self.settings.max_steering_vectors:
                raise SteeringSpecError(
                    f"this request needs {need} steering slots but the engine has max_steering_vectors="
                    f"{self.settings.max_steering_vectors}")
        except (SteeringSpecError, VectorFileError) as exc:
            raise SteeringSpecError(f"invalid steering: {exc}") from None
        canonical = [c.canonical() for c in resolved]
        key = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
        return ResolvedSteering(key=key, components=resolved, slots=need)

    def _component(self, i: int, comp) -> ResolvedComponent:
        stored = self.store.get(comp.vector)
        stored.vector.check_against_model(self.hidden_size, self.num_layers, f"vector {comp.vector!r}")
        layers = comp.layers if comp.layers is not None else tuple(stored.vector.layers)
        out_of_range = [layer for layer in layers if not 0 <= layer < self.num_layers]
        if out_of_range:
            raise SteeringSpecError(
                f"steering[{i}].layers {out_of_range[:8]} out of range: the model has {self.num_layers} "
                f"layers (0..{self.num_layers - 1})")
        missing = [layer for layer in layers if layer not in stored.vector.directions]
        if missing:
            raise SteeringSpecError(
                f"steering[{i}].layers {missing[:8]} are not in vector {comp.vector!r} "
                f"(it has layers {stored.vector.layers})")
        if abs(comp.scale) > self.settings.max_scale:
            raise SteeringSpecError(
                f"steering[{i}].scale {comp.scale} exceeds the server limit of {self.settings.max_scale}")
        return ResolvedComponent(vector=comp.vector, content_hash=stored.content_hash, blob=str(stored.blob),
                                 source=str(stored.path), scale=comp.scale, layers=tuple(layers),
                                 positions=comp.positions, mode=comp.mode)


def _check_layer_modes(components: tuple[ResolvedComponent, ...]) -> None:
    layer_modes: dict[int, str] = {}
    for i, comp in enumerate(components):
        for layer in comp.layers:
            if layer_modes.setdefault(layer, comp.mode) != comp.mode:
                raise SteeringSpecError(
                    f"steering[{i}] uses mode {comp.mode!r} at layer {layer}, where another vector "
                    f"in the request uses {layer_modes[layer]!r}; combined vectors must agree per layer")
