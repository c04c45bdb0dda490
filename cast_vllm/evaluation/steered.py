"""Phases 3 and 4 of the protocol: the steered methods' vectors, and their settings chosen on dev
(dev phase B).

Vectors: every kind the methods need (``random_vector`` needs ``cast`` of the same seed), per
seed of the source sample (``mean_diff`` uses the whole pool, so one seed), registered in the
engine under names unique to this pair.

Settings: one coordinate search (``search.py``) per tuned vector, all searches advancing
together so each stage of every search is one batched engine call on the dev items. By default
only seed 0's vector is searched and its setting reused for the other seeds
(``tune_each_seed`` searches every seed); ``ablation_settings="cast"`` gives
``cast_random_selection`` and ``mean_diff`` CAST's setting instead of their own search (CAST's
variants always search their own);
``random_vector`` always takes CAST's setting of the same seed. With label scoring, every chosen
setting the search did not score runs once more on dev for its calibration bias.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Hashable

from cast_vllm.evaluation.config import EvalConfig
from cast_vllm.evaluation.data import EvalData
from cast_vllm.evaluation.jobs import Answers, Job, RunContext
from cast_vllm.evaluation.methods import TUNED_STEERED, VARIANT_METHODS
from cast_vllm.evaluation.search import CoordinateSearch, SearchSpace, Setting
from cast_vllm.evaluation.source_vectors import BuiltVector, SourceVectors

VectorKey = tuple[str, int]            # (kind, seed)


@dataclass
class Vectors:
    kinds: list[str]
    seeds: list[int]
    built: dict[VectorKey, BuiltVector] = field(default_factory=dict)
    names: dict[VectorKey, str] = field(default_factory=dict)   # as registered in the engine

    def seeds_of(self, kind: str) -> list[int]:
        return self.seeds[:1] if kind == "mean_diff" else self.seeds   # the whole pool: no sample to vary

    def job(self, kind: str, seed: int, setting: Setting, data: EvalData, part: str, key: Hashable) -> Job:
        """The zero-shot prompts of ``part`` ("dev" or "test") steered by this vector at ``setting``."""
        items, prompts = (data.dev, data.zero_dev) if part == "dev" else (data.test, data.zero_test)
        return Job(key, kind, items, prompts, setting.spec(self.names[(kind, seed)]), seed)


def vector_kinds(methods) -> list[str]:
    kinds = [k for k in TUNED_STEERED if k in methods or (k == "cast" and "random_vector" in methods)]
    if "random_vector" in methods:
        kinds.append("random_vector")
    return kinds


def build_vectors(ctx: RunContext, source: SourceVectors | None) -> Vectors:
    cfg = ctx.cfg
    vectors = Vectors(vector_kinds(cfg.methods), list(range(cfg.seeds)))
    tag = "ev-" + hashlib.sha256(repr((cfg.name, cfg.source, cfg.target, cfg.split_seed)).encode()).hexdigest()[:10]
    for kind in vectors.kinds:
        for seed in vectors.seeds_of(kind):
            built = source.build(kind, seed)
            vectors.built[(kind, seed)] = built
            vectors.names[(kind, seed)] = ctx.engine.register(f"{tag}-{kind}-s{seed}", built.vector)
    return vectors


@dataclass
class SteeredDev:
    space: SearchSpace
    tuned: list[str]                                  # kinds with a search of their own
    searches: dict[VectorKey, CoordinateSearch]
    chosen: dict[VectorKey, Setting]
    dev_answers: dict[Hashable, Answers]              # ((kind, seed), setting) -> dev answers

    def chosen_dev_answers(self, kind: str, seed: int) -> Answers | None:
        return self.dev_answers.get(((kind, seed), self.chosen[(kind, seed)]))


def search_space(cfg: EvalConfig, num_layers: int) -> SearchSpace:
    return SearchSpace.for_model(num_layers, fractions=tuple(cfg.layer_fractions), width=cfg.layer_width,
                                 alphas=tuple(cfg.alphas), modes=tuple(cfg.modes), positions=tuple(cfg.positions),
                                 vary_width=cfg.vary_width)


def steered_dev_phase(ctx: RunContext, data: EvalData, vectors: Vectors) -> SteeredDev:
    cfg = ctx.cfg
    space = search_space(cfg, ctx.engine.num_layers)
    own_search = ("cast", *VARIANT_METHODS)     # ablations may borrow CAST's setting; CAST's variants never
    tuned = [k for k in TUNED_STEERED if k in vectors.kinds and (k in own_search or cfg.ablation_settings == "own")]
    searches = {(kind, seed): CoordinateSearch(space) for kind in tuned
                for seed in (vectors.seeds_of(kind) if cfg.tune_each_seed else vectors.seeds[:1])}
    dev_answers = run_searches(ctx, data, vectors, searches)
    chosen = chosen_settings(vectors, searches, tuned)
    if ctx.labels is not None:
        dev_answers.update(calibration_runs(ctx, data, vectors, chosen, dev_answers))
    return SteeredDev(space, tuned, searches, chosen, dev_answers)


def run_searches(ctx: RunContext, data: EvalData, vectors: Vectors,
                 searches: dict[VectorKey, CoordinateSearch]) -> dict[Hashable, Answers]:
    """Advance every search stage by stage, one engine call per stage; all dev answers."""
    dev_answers: dict[Hashable, Answers] = {}
    stage = 0
    while searches:
        batch = [vectors.job(*key, setting, data, "dev", (key, setting))
                 for key, search in searches.items() for setting in search.propose()]
        if not batch:
            break
        stage += 1
        answers = ctx.run(batch, "dev", f"dev: steering search stage {stage}")
        dev_answers.update(answers)
        for key, search in searches.items():
            if search.pending:
                search.tell([ctx.dev_score(answers[(key, s)], data.dev) for s in search.pending])
    return dev_answers


def chosen_settings(vectors: Vectors, searches: dict[VectorKey, CoordinateSearch],
                    tuned: list[str]) -> dict[VectorKey, Setting]:
    """Each vector's setting: its own search's best, seed 0's search's best, or CAST's."""
    first = vectors.seeds[0]
    chosen: dict[VectorKey, Setting] = {}
    for kind in vectors.kinds:
        if kind == "random_vector":
            continue
        for seed in vectors.seeds_of(kind):
            if (kind, seed) in searches:
                chosen[(kind, seed)] = searches[(kind, seed)].best[0]
            elif kind in tuned:
                chosen[(kind, seed)] = searches[(kind, first)].best[0]
            else:   # ablation_settings == "cast"
                chosen[(kind, seed)] = chosen.get(("cast", seed)) or searches[("cast", first)].best[0]
    if "random_vector" in vectors.kinds:
        for seed in vectors.seeds:
            chosen[("random_vector", seed)] = chosen[("cast", seed)]
    return chosen


def calibration_runs(ctx: RunContext, data: EvalData, vectors: Vectors, chosen: dict[VectorKey, Setting],
                     scored: dict[Hashable, Answers]) -> dict[Hashable, Answers]:
    """Dev answers at the chosen settings the search did not score (for calibration biases)."""
    extra = [vectors.job(kind, seed, setting, data, "dev", ((kind, seed), setting))
             for (kind, seed), setting in chosen.items() if ((kind, seed), setting) not in scored]
    return ctx.run(extra, "dev", "dev: calibration runs") if extra else {}
