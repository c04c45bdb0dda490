"""Deterministic target splits and leak-free source pools.

The target task is split once into a *dev* part (every hyper-parameter is chosen on it) and a
*test* part (only reported). The split depends on the items and the seed alone:

1. items with the same input text (case- and space-insensitive) are collapsed to the first, so
   no text sits in both parts;
2. classification targets are stratified: each label's items are shuffled (seeded) and the
   labels interleaved round-robin, so the test part is label-balanced as far as the data
   allows (a 70%-positive file still gives a 50/50 test set); open-vocabulary targets are
   simply shuffled;
3. the first ``n_test`` items of that order are the test part and the next ``n_dev`` the dev
   part. The test part therefore does not depend on ``n_dev``.

The source pool is a seeded subsample of the source file *minus every item whose text occurs
in the target's dev or test part* (in-domain runs such as movies -> movies, and overlapping
files such as function_vectors/sentiment vs sentiment/movies, cannot leak test texts into the
vector or the demonstrations).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cast_vllm.errors import CastVllmError
from cast_vllm.method.tasks import TaskItem

logger = logging.getLogger(__name__)


class EvalDataError(CastVllmError, ValueError):
    """The data cannot be split or pooled as asked; the message names the sizes."""


def normalise_text(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def dedupe(items: Sequence[TaskItem]) -> list[TaskItem]:
    """Items with a new input text, in file order."""
    seen: set[str] = set()
    out = []
    for it in items:
        key = normalise_text(it.input)
        if key not in seen:
            seen.add(key)
            out.append(it)
    return out


@dataclass(frozen=True)
class Split:
    dev: tuple[TaskItem, ...]
    test: tuple[TaskItem, ...]
    seed: int
    stratified: bool

    @property
    def dev_ids(self) -> list[str]:
        return [it.id for it in self.dev]

    @property
    def test_ids(self) -> list[str]:
        return [it.id for it in self.test]


def is_closed_label_task(items: Sequence[TaskItem], max_labels: int = 16) -> bool:
    """Classification (items carry options) or pairs whose outputs form a small closed set."""
    if not items:
        return False
    if items[0].options:
        return True
    return len({it.answer for it in items}) <= max_labels


def split_target(items: Sequence[TaskItem], n_dev: int, n_test: int, seed: int = 0,
                 stratify: bool | None = None) -> Split:
    """Disjoint dev and test parts (module doc). ``stratify=None``: by label for closed-label
    tasks, plain shuffle otherwise."""
    if n_dev < 1 or n_test < 1:
        raise EvalDataError(f"n_dev and n_test must be >= 1, got n_dev={n_dev}, n_test={n_test}")
    unique = dedupe(items)
    if n_dev + n_test > len(unique):
        raise EvalDataError(f"the target has {len(unique)} distinct items ({len(items)} before removing duplicate "
                            f"texts), fewer than n_dev + n_test = {n_dev} + {n_test}")
    if stratify is None:
        stratify = is_closed_label_task(unique)
    rng = np.random.default_rng([seed, 0x5E11])
    if stratify:
        groups: dict[str, list[int]] = {}
        for i, it in enumerate(unique):
            groups.setdefault(it.answer, []).append(i)
        queues = [[g[j] for j in rng.permutation(len(g))] for _, g in sorted(groups.items())]
        order: list[int] = []
        depth = 0
        while len(order) < len(unique):
            for q in queues:
                if depth < len(q):
                    order.append(q[depth])
            depth += 1
    else:
        order = rng.permutation(len(unique)).tolist()
    test = tuple(unique[i] for i in order[:n_test])
    dev = tuple(unique[i] for i in order[n_test:n_test + n_dev])
    return Split(dev=dev, test=test, seed=seed, stratified=bool(stratify))


def source_pool(items: Sequence[TaskItem], exclude: Sequence[TaskItem], size: int, seed: int = 0
                ) -> tuple[list[TaskItem], int]:
    """``(pool, n_excluded)``: up to ``size`` source items whose text is not among
    ``exclude``'s texts (``size=0``: all of them), in file order. The items are taken along one
    seeded permutation of the source file, skipping excluded ones, so targets that exclude
    nothing get the same pool (and reuse its activations)."""
    banned = {normalise_text(it.input) for it in exclude}
    unique = dedupe(items)
    keep = [normalise_text(it.input) not in banned for it in unique]
    excluded = len(unique) - sum(keep)
    if excluded:
        logger.info("source pool: %d items dropped because their text is in the target's dev/test part", excluded)
    if not any(keep):
        raise EvalDataError("no source item is left after removing the target's dev/test texts")
    order = np.random.default_rng([seed, 0x900]).permutation(len(unique))
    chosen = [int(i) for i in order if keep[i]]
    if size:
        chosen = chosen[:size]
    return [unique[i] for i in sorted(chosen)], excluded
