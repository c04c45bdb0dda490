"""The compared methods and how each turns a target item into an engine request.

| method                  | prompt                                   | steering                         |
|-------------------------|------------------------------------------|----------------------------------|
| ``zero_shot``           | target query                             | none                             |
| ``icl``                 | k *source* demos (retrieved) + query     | none                             |
| ``target_icl``          | k *target dev* demos (retrieved) + query | none (upper reference)           |
| ``cast``                | target query                             | CAST vector (IDEAL selection)    |
| ``cast_random_selection``| target query                            | CAST vector, random samples      |
| ``mean_diff``           | target query                             | mean difference over whole pool  |
| ``random_vector``       | target query                             | random direction, CAST's norms   |
| ``cast_target_aware``   | target query                             | CAST vector, samples chosen by   |
|                         |                                          | influence on the target's dev    |
|                         |                                          | queries (``ideal_target``)       |
| ``cast_balanced``       | target query                             | CAST vector, label-balanced      |
|                         |                                          | demonstrations and mean          |
| ``cast_relative``       | target query                             | CAST vector, each layer resized  |
|                         |                                          | to one share of its residual norm|
| ``cast_multi_source``   | target query                             | CAST vectors of several sources, |
|                         |                                          | similarity-weighted              |

The last four are variants (issue 13), run only when named in ``--methods``.

Cross-task ICL (Chatterjee et al., ACL 2024) retrieves, for each target query, the ``k`` source
pool items most similar to it. Similarity is the cosine between the model's own zero-shot
last-token states at the selection layer (the same embedding IDEAL uses), each set centred on
its own mean first so the shared prompt-format component of a task does not dominate. The
most similar demonstration is put last, next to the query. Demonstrations are written in the
*source* task's format, the query in the target's (``cross_task_prompt``); with one format for
both this is exactly ``build_prompt(item, demos, spec)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cast_vllm.errors import CastVllmError
from cast_vllm.method.tasks import TaskItem, TaskSpec, plain_prompt

METHODS = ("zero_shot", "calibrated_zero_shot", "icl", "cast", "cast_random_selection", "mean_diff", "random_vector",
           "target_icl")
#: variants of CAST, off by default (each adds a dev search)
VARIANT_METHODS = ("cast_target_aware", "cast_balanced", "cast_relative", "cast_multi_source")
#: every method, in report order
ALL_METHODS = METHODS[:4] + VARIANT_METHODS + METHODS[4:]
STEERED_METHODS = ("cast", "cast_random_selection", "mean_diff", "random_vector") + VARIANT_METHODS
#: vectors with a dev search of their own (random_vector reuses cast's setting)
TUNED_STEERED = ("cast", "cast_random_selection", "mean_diff") + VARIANT_METHODS
ICL_METHODS = ("icl", "target_icl")
#: scored from another method's answers, with no engine run of their own
DERIVED_METHODS = ("calibrated_zero_shot",)
DESCRIPTIONS = {
    "zero_shot": "target query only",
    "calibrated_zero_shot": "zero-shot answers with dev-set batch calibration (label scoring; the same as zero-shot "
                            "under generation scoring, which has no label prior to correct)",
    "icl": "cross-task ICL: k retrieved source demonstrations in the prompt",
    "cast": "zero-shot + CAST vector (IDEAL-selected source samples)",
    "cast_random_selection": "zero-shot + CAST vector from randomly selected source samples",
    "mean_diff": "zero-shot + mean few-shot/zero-shot difference over the whole source pool",
    "random_vector": "zero-shot + random vector with CAST's per-layer norms (control)",
    "target_icl": "k retrieved target dev demonstrations (upper reference, uses target labels)",
    "cast_target_aware": "zero-shot + CAST vector, source samples chosen by influence on the target's dev queries",
    "cast_balanced": "zero-shot + CAST vector, label-balanced demonstrations and label-weighted mean",
    "cast_relative": "zero-shot + CAST vector, every layer resized to the same share of the target's residual norm",
    "cast_multi_source": "zero-shot + CAST vectors of the source and the extra sources, weighted per layer by "
                         "similarity to the target",
}


class MethodError(CastVllmError, ValueError):
    """An unknown method or an unusable method list."""


def parse_methods(spec: str | Sequence[str]) -> list[str]:
    names = [m.strip() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    unknown = [m for m in names if m not in ALL_METHODS]
    if unknown:
        raise MethodError(f"unknown method(s) {unknown}; use any of {', '.join(ALL_METHODS)}")
    if not names:
        raise MethodError("no methods given")
    out = list(dict.fromkeys(names))
    if "zero_shot" not in out:
        out.insert(0, "zero_shot")      # the reference of every significance test
    return out


def zero_shot_prompt(item: TaskItem, spec: TaskSpec) -> str:
    return cross_task_prompt(item, (), spec, spec)


def cross_task_prompt(item: TaskItem, demos: Sequence[TaskItem], target_spec: TaskSpec,
                      source_spec: TaskSpec) -> str:
    """Demonstrations in the source format, then the query in the target format."""
    return plain_prompt(item, demos, target_spec, source_spec)


def _centre_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def retrieve(query_emb: np.ndarray, pool_emb: np.ndarray, k: int, *,
             exclude: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
    """Per query, the indices of the ``k`` most similar pool rows, least similar first (the
    best sits next to the query). ``exclude[i]``: pool rows query ``i`` must not get (itself,
    when the pool is the query set)."""
    if k < 1:
        raise MethodError(f"number of demonstrations must be >= 1, got {k}")
    q, p = _centre_normalise(query_emb), _centre_normalise(pool_emb)
    if k > len(p) - (1 if exclude else 0):
        raise MethodError(f"cannot retrieve {k} demonstrations from a pool of {len(p)}")
    sims = q @ p.T
    if exclude:
        for i, rows in enumerate(exclude):
            sims[i, list(rows)] = -np.inf
    out = []
    for row in sims:
        top = np.argsort(-row, kind="stable")[:k]
        out.append([int(j) for j in top[::-1]])
    return out
