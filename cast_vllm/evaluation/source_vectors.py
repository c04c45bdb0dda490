"""Steering vectors of the evaluated methods, built from one source pool.

Runs the CAST pipeline's core (``cast_vllm.method.source_shift``: selection, demonstrations,
few-shot minus zero-shot) but reads through an ``ActivationCache`` that keeps the pool's
zero-shot activations, so several seeds and vector kinds cost only their few-shot passes. Per
kind, for a seed ``s``:

- ``cast``: ``num_selected`` samples chosen by IDEAL influence diffusion (``selection.py``)
  on the pool's zero-shot state at the selection layer; each gets ``num_demos``
  demonstrations drawn (seeded) from the other selected samples; the vector is the mean over
  them of few-shot minus zero-shot last-token states, at every layer;
- ``cast_random_selection``: the same with ``num_selected`` samples drawn uniformly (seeded):
  the selection ablation;
- ``mean_diff``: no selection at all, the mean difference over the *whole* pool (demos drawn
  from the pool), i.e. a plain in-context / task vector;
- ``random_vector``: ``random_control_vector`` of the ``cast`` vector of the same seed, a
  random direction with the same per-layer norm (the control that must not help);
- ``cast_target_aware``: as ``cast``, but the samples are those whose influence cascades reach
  most of the target's dev queries (``ideal_target``; the queries' zero-shot states, never
  their labels or any test item);
- ``cast_balanced``: as ``cast``, with label-balanced demonstrations and every gold label
  weighted equally in the mean (``source_shift.py``);
- ``cast_relative``: the ``cast`` vector with every layer resized to the same share of the
  target's residual norm there (``cast_math.relative_to_residual``; the norms are those of the
  dev queries' zero-shot states);
- ``cast_multi_source``: the ``cast`` vectors of this source and of each extra source (their
  own ``SourceVectors``), summed with per-layer weights: each source's cosine between its
  pool's mean zero-shot state and the dev queries' (``cast_math.similarity_weights``, sources
  below the threshold dropped).

Activations come from ``HFActivationReader`` (forward hooks, exact DESIGN.md layer
semantics). The vLLM probe reader would need a second in-process vLLM engine next to the
steering engine, which vLLM does not support cleanly, and it has no Gemma3 probe.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from cast_vllm.method.cast_math import (aggregate_differences, random_control_vector, relative_to_residual,
                                        similarity_weights, unique_names)
from cast_vllm.method.source_shift import ZERO_SHOT, ShiftSettings, StateReader, source_shift
from cast_vllm.method.tasks import TaskItem, TaskSpec, build_prompts
from cast_vllm.vectors import SteeringVector

logger = logging.getLogger(__name__)

VECTOR_KINDS = ("cast", "cast_random_selection", "mean_diff", "random_vector", "cast_target_aware", "cast_balanced",
                "cast_relative", "cast_multi_source")
#: the selection rule behind each kind built from differences (None: the whole pool)
_SELECTION = {"cast": "ideal", "cast_random_selection": "random", "mean_diff": None,
              "cast_target_aware": "ideal_target", "cast_balanced": "ideal"}
#: kinds made from other kinds' vectors rather than from differences of their own
_DERIVED = ("random_vector", "cast_relative", "cast_multi_source")


@dataclass
class BuiltVector:
    kind: str
    seed: int
    vector: SteeringVector
    sample_ids: list[str]
    demo_ids: list[list[str]]
    source_weights: dict[str, list[float]] | None = None   # cast_multi_source: per-layer weight of each source

    def norms(self) -> dict[int, float]:
        return {layer: float(v.norm()) for layer, v in self.vector.directions.items()}


class ActivationCache:
    """Last-prompt-token states of prompts at every layer, through one HF reader; caches by
    prompt text so a prompt is read once per process."""

    def __init__(self, reader: Any, tokenizer: Any, progress: bool = True):
        self.reader = reader
        self.tokenizer = tokenizer
        self.progress = progress
        self._cache: dict[str, np.ndarray] = {}

    def read(self, prompts: Sequence[str], desc: str = "activations") -> np.ndarray:
        from tqdm.auto import tqdm

        todo = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if todo:
            ids = self.tokenizer(todo, add_special_tokens=True)["input_ids"]
            chunk = 64
            bar = tqdm(total=len(todo), desc=desc, unit="prompt", leave=False, disable=not self.progress,
                       dynamic_ncols=True)
            try:
                for start in range(0, len(todo), chunk):
                    acts = self.reader.read(ids[start:start + chunk])
                    for p, a in zip(todo[start:start + chunk], acts):
                        self._cache[p] = a
                    bar.update(min(chunk, len(todo) - start))
            finally:
                bar.close()
        return np.stack([self._cache[p] for p in prompts]) if prompts else np.empty((0,))


class SourceVectors:
    """Vectors of every kind and seed from one source pool (module doc)."""

    def __init__(self, acts: ActivationCache, pool: Sequence[TaskItem], spec: TaskSpec, *, num_layers: int,
                 num_selected: int = 32, num_demos: int = 4, selection_layer: int | None = None,
                 neighbors: int = 10, diffusion_steps: int = 10, diffusion_runs: int = 10, model: str = "",
                 name: str = "source", target_prompts: Sequence[str] = (),
                 extra_sources: Sequence[SourceVectors] = (), similarity_threshold: float = 0.0):
        if num_selected > len(pool):
            raise ValueError(f"num_selected={num_selected} is larger than the source pool ({len(pool)} items)")
        if not 1 <= num_demos < num_selected:
            raise ValueError(f"num_demos must be in [1, num_selected - 1], got {num_demos}")
        self.acts = acts
        self.pool = list(pool)
        self.spec = spec
        self.num_layers = num_layers
        self.num_selected = num_selected
        self.num_demos = num_demos
        self.selection_layer = num_layers // 2 if selection_layer is None else selection_layer
        self.neighbors, self.diffusion_steps, self.diffusion_runs = neighbors, diffusion_steps, diffusion_runs
        self.model = model
        self.name = name
        self.target_prompts = list(target_prompts)      # the target's dev queries (selection, norms, similarity)
        self.extra_sources = list(extra_sources)        # cast_multi_source's other sources
        self.similarity_threshold = similarity_threshold
        self._built: dict[tuple[str, int], BuiltVector] = {}

    def _reader(self, kind: str = "", seed: int = 0) -> StateReader:
        """Reads through the cache, the progress bar naming what is read."""
        def read(prompts: list[str], phase: str) -> np.ndarray:
            what = "zero-shot states" if phase == ZERO_SHOT else f"{kind} s{seed} few-shot states"
            return self.acts.read(prompts, desc=f"{self.name}: {what}")
        return read

    def zero_states(self) -> np.ndarray:
        """``[pool, layers, hidden]`` zero-shot last-token states."""
        return self._reader()(build_prompts(self.pool, None, self.spec), ZERO_SHOT)

    def embeddings(self) -> np.ndarray:
        """The pool's zero-shot states at the selection layer (IDEAL and retrieval use them)."""
        return self.zero_states()[:, self.selection_layer, :]

    def _target_states(self, kind: str) -> np.ndarray:
        """``[dev queries, layers, hidden]`` zero-shot states of the target's dev queries."""
        if not self.target_prompts:
            raise ValueError(f"{kind} needs the target's dev queries (target_prompts)")
        return self.acts.read(self.target_prompts, desc=f"{self.name}: target dev states")

    def build(self, kind: str, seed: int) -> BuiltVector:
        if kind not in VECTOR_KINDS:
            raise ValueError(f"unknown vector kind {kind!r}; use one of {', '.join(VECTOR_KINDS)}")
        key = (kind, seed)
        if key in self._built:
            return self._built[key]
        if kind in _DERIVED:
            built = self._derived(kind, seed)
            self._built[key] = built
            return built
        balanced = kind == "cast_balanced"
        settings = ShiftSettings(self.num_selected, self.num_demos, _SELECTION[kind], self.selection_layer,
                                 self.neighbors, self.diffusion_steps, self.diffusion_runs, read_whole_pool=True,
                                 balance_labels=balanced)
        shift = source_shift(self.pool, self.spec, self._reader(kind, seed), settings, seed,
                             target_embeddings=(self._target_states(kind)[:, self.selection_layer, :]
                                                if kind == "cast_target_aware" else None))
        agg = aggregate_differences(shift.diffs, "mean", shift.weights)
        meta = {"model": self.model, "method": kind, "source": self.name, "seed": str(seed),
                "selection": _SELECTION[kind] or "none", "balance_labels": str(balanced).lower(),
                "num_samples": str(len(shift.items)), "num_demos": str(self.num_demos),
                "selected_ids": json.dumps(shift.sample_ids), "position": "last_prompt_token"}
        built = BuiltVector(kind, seed, _vector(agg, meta), shift.sample_ids, shift.demo_ids)
        logger.info("%s %s seed %d: %d samples, |v| per layer %.2f..%.2f", self.name, kind, seed, len(shift.items),
                    min(built.norms().values()), max(built.norms().values()))
        self._built[key] = built
        return built

    def _derived(self, kind: str, seed: int) -> BuiltVector:
        base = self.build("cast", seed)
        meta = {**base.vector.metadata, "method": kind}
        if kind == "random_vector":
            vec = random_control_vector(base.vector, seed=1000 + seed)
            vec.metadata["method"] = kind
            return BuiltVector(kind, seed, vec, base.sample_ids, base.demo_ids)
        if kind == "cast_relative":
            residual_norms = np.linalg.norm(self._target_states(kind).astype(np.float64), axis=2).mean(axis=0)
            resized = relative_to_residual(_stacked(base.vector, self.num_layers), residual_norms)
            return BuiltVector(kind, seed, _vector(resized, meta), base.sample_ids, base.demo_ids)
        if not self.extra_sources:
            raise ValueError("cast_multi_source needs extra sources (EvalConfig.extra_sources)")
        sources = [self, *self.extra_sources]
        names = unique_names([src.name for src in sources])
        built = [src.build("cast", seed) for src in sources]
        target_mean = self._target_states(kind).astype(np.float64).mean(axis=0)
        weights = similarity_weights({n: src.zero_states().astype(np.float64).mean(axis=0)
                                      for n, src in zip(names, sources)}, target_mean, self.similarity_threshold)
        combined = sum(weights[n][:, None] * _stacked(b.vector, self.num_layers) for n, b in zip(names, built))
        meta["sources"] = json.dumps(names)
        meta["source_weights"] = json.dumps({n: [round(float(w), 6) for w in weights[n]] for n in names})
        return BuiltVector(kind, seed, _vector(combined, meta),
                           [f"{n}:{i}" for n, b in zip(names, built) for i in b.sample_ids],
                           [[f"{n}:{i}" for i in d] for n, b in zip(names, built) for d in b.demo_ids],
                           {n: [float(w) for w in weights[n]] for n in names})


def _stacked(vector: SteeringVector, num_layers: int) -> np.ndarray:
    """``[layers, hidden]`` float64, zero where the vector has no layer."""
    hidden = next(iter(vector.directions.values())).shape[-1]
    out = np.zeros((num_layers, hidden))
    for layer, v in vector.directions.items():
        out[layer] = v.double().numpy()
    return out


def _vector(directions: np.ndarray, meta: dict[str, str]) -> SteeringVector:
    return SteeringVector({layer: torch.from_numpy(np.asarray(directions[layer], dtype=np.float32))
                           for layer in range(len(directions))}, meta)

