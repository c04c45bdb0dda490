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
  weighted equally in the mean (``source_shift.py``).

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

from cast_vllm.method.cast_math import aggregate_differences, random_control_vector
from cast_vllm.method.source_shift import ZERO_SHOT, ShiftSettings, StateReader, source_shift
from cast_vllm.method.tasks import TaskItem, TaskSpec, build_prompts
from cast_vllm.vectors import SteeringVector

logger = logging.getLogger(__name__)

VECTOR_KINDS = ("cast", "cast_random_selection", "mean_diff", "random_vector", "cast_target_aware", "cast_balanced")
#: the selection rule behind each kind built from differences (None: the whole pool)
_SELECTION = {"cast": "ideal", "cast_random_selection": "random", "mean_diff": None,
              "cast_target_aware": "ideal_target", "cast_balanced": "ideal"}


@dataclass
class BuiltVector:
    kind: str
    seed: int
    vector: SteeringVector
    sample_ids: list[str]
    demo_ids: list[list[str]]

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
                 name: str = "source", target_prompts: Sequence[str] = ()):
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
        self.target_prompts = list(target_prompts)      # the target's dev queries, for target-aware selection
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

    def _target_embeddings(self) -> np.ndarray:
        if not self.target_prompts:
            raise ValueError("cast_target_aware needs the target's dev queries (target_prompts)")
        return self.acts.read(self.target_prompts, desc=f"{self.name}: target dev states")[:, self.selection_layer, :]

    def build(self, kind: str, seed: int) -> BuiltVector:
        if kind not in VECTOR_KINDS:
            raise ValueError(f"unknown vector kind {kind!r}; use one of {', '.join(VECTOR_KINDS)}")
        key = (kind, seed)
        if key in self._built:
            return self._built[key]
        if kind == "random_vector":
            base = self.build("cast", seed)
            vec = random_control_vector(base.vector, seed=1000 + seed)
            vec.metadata["method"] = "random_vector"
            built = BuiltVector(kind, seed, vec, base.sample_ids, base.demo_ids)
            self._built[key] = built
            return built
        balanced = kind == "cast_balanced"
        settings = ShiftSettings(self.num_selected, self.num_demos, _SELECTION[kind], self.selection_layer,
                                 self.neighbors, self.diffusion_steps, self.diffusion_runs, read_whole_pool=True,
                                 balance_labels=balanced)
        shift = source_shift(self.pool, self.spec, self._reader(kind, seed), settings, seed,
                             target_embeddings=self._target_embeddings() if kind == "cast_target_aware" else None)
        agg = aggregate_differences(shift.diffs, "mean", shift.weights)
        meta = {"model": self.model, "method": kind, "source": self.name, "seed": str(seed),
                "selection": _SELECTION[kind] or "none", "balance_labels": str(balanced).lower(),
                "num_samples": str(len(shift.items)), "num_demos": str(self.num_demos),
                "selected_ids": json.dumps(shift.sample_ids), "position": "last_prompt_token"}
        vec = SteeringVector({layer: torch.from_numpy(agg[layer].astype(np.float32)) for layer in range(agg.shape[0])},
                             meta)
        built = BuiltVector(kind, seed, vec, shift.sample_ids, shift.demo_ids)
        logger.info("%s %s seed %d: %d samples, |v| per layer %.2f..%.2f", self.name, kind, seed, len(shift.items),
                    min(built.norms().values()), max(built.norms().values()))
        self._built[key] = built
        return built
