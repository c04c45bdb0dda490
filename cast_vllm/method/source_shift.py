"""One source's few-shot shift, the core of CAST that ``extract`` and ``eval`` share: choose
samples (``selection.py``) on the pool's zero-shot states, give each demonstrations drawn
(seeded) from the other chosen ones, and take few-shot minus zero-shot last-token states.

With ``balance_labels`` the demonstrations cover the gold labels evenly and every label gets the
same total weight in the mean, so a skewed sample (or a prompt whose demonstrations share one
answer) does not put a label prior into the vector.

Each caller brings its own way of reading states as a ``StateReader`` (extract: an
``ActivationPool`` with shards, Ray workers and checkpoints; eval: a prompt cache shared by
several seeds and vector kinds) and aggregates the differences itself
(``cast_math.aggregate_differences``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from cast_vllm.method.cast_math import assign_balanced_demos, assign_demos, label_balanced_weights
from cast_vllm.method.selection import select_samples
from cast_vllm.method.tasks import TaskItem, TaskSpec, build_prompts

ZERO_SHOT, FEW_SHOT = "zero-shot", "few-shot"

#: ``read(prompts, phase)`` -> float32 ``[prompts, layers, hidden]``; ``phase`` is ZERO_SHOT or FEW_SHOT
StateReader = Callable[[list[str], str], np.ndarray]


@dataclass(frozen=True)
class ShiftSettings:
    """How samples are chosen and shown demonstrations."""

    num_selected: int
    num_demos: int
    selection: str | None = "ideal"   # a rule of selection.py; None: the whole pool, no selection
    selection_pos: int = 0            # which of the read layers embeds samples for selection
    neighbors: int = 10
    diffusion_steps: int = 10
    diffusion_runs: int = 10
    read_whole_pool: bool = False     # read every zero-shot prompt even when the rule needs none (a cache wants them)
    balance_labels: bool = False      # label-balanced demonstrations and weights (module doc)


@dataclass
class SourceShift:
    """What one source contributes: the chosen samples, their demonstrations, the zero-shot
    states as read (the whole pool, or only the chosen under random selection) and the
    float64 differences ``[chosen, layers, hidden]`` with each one's weight in the mean (None: a
    plain mean)."""

    items: list[TaskItem]
    demos: list[list[TaskItem]]
    zero: np.ndarray
    diffs: np.ndarray
    weights: np.ndarray | None

    @property
    def sample_ids(self) -> list[str]:
        return [it.id for it in self.items]

    @property
    def demo_ids(self) -> list[list[str]]:
        return [[d.id for d in ds] for ds in self.demos]


def source_shift(pool: Sequence[TaskItem], spec: TaskSpec, read: StateReader, settings: ShiftSettings, seed: int,
                 *, chat: bool = False, tokenizer: Any = None,
                 target_embeddings: np.ndarray | None = None) -> SourceShift:
    """Select, read zero- then few-shot states, subtract (module doc). ``target_embeddings``
    (the target's zero-shot states at the selection layer) serve target-aware selection.
    Raises ``SelectionError`` when the pool cannot give the selection."""
    n = len(pool)
    if settings.selection == "random" and not settings.read_whole_pool:
        selected = select_samples(None, settings.num_selected, "random", seed=seed, n_items=n)
        zero = read(build_prompts([pool[i] for i in selected], None, spec, chat=chat, tokenizer=tokenizer), ZERO_SHOT)
        zero_selected = zero
    else:
        zero = read(build_prompts(pool, None, spec, chat=chat, tokenizer=tokenizer), ZERO_SHOT)
        selected = _select(zero, settings, seed, target_embeddings)
        zero_selected = zero[selected]
    items = [pool[i] for i in selected]
    labels = [it.answer for it in items]
    if settings.balance_labels:
        assigned, weights = assign_balanced_demos(labels, settings.num_demos, seed), label_balanced_weights(labels)
    else:
        assigned, weights = assign_demos(len(items), settings.num_demos, seed), None
    demos = [[items[j] for j in d] for d in assigned]
    few = read(build_prompts(items, demos, spec, chat=chat, tokenizer=tokenizer), FEW_SHOT)
    diffs = few.astype(np.float64) - zero_selected.astype(np.float64)
    return SourceShift(items, demos, zero, diffs, weights)


def _select(zero: np.ndarray, settings: ShiftSettings, seed: int, target_embeddings: np.ndarray | None) -> list[int]:
    if settings.selection is None:
        return list(range(len(zero)))
    embeddings = None if settings.selection == "random" else zero[:, settings.selection_pos, :]
    return select_samples(embeddings, settings.num_selected, settings.selection, seed=seed, n_items=len(zero),
                          neighbors=settings.neighbors, diffusion_steps=settings.diffusion_steps,
                          diffusion_runs=settings.diffusion_runs, target_embeddings=target_embeddings)
