"""Phase 5 of the protocol (test phase): every method at its dev-chosen setting on the same test
items, in one batched engine call, steered methods once per seed. Each run is scored with the
configured calibration (its bias from the dev answers at the same setting) and, with label
scoring, also without and with dev calibration (the report's secondary table).

``calibrated_zero_shot`` runs nothing: it is zero-shot's test answers with the label prior
measured on zero-shot's dev answers removed (batch calibration), the baseline any gain from
steering a small model must beat, since much of such a gain can be label-bias correction
(bench/results/transfer_notes.md). Under generation scoring it equals zero-shot."""

from __future__ import annotations

from dataclasses import dataclass

from cast_vllm.evaluation.data import EvalData
from cast_vllm.evaluation.jobs import Answers, Job, Outcome, RunContext
from cast_vllm.evaluation.methods import ICL_METHODS, STEERED_METHODS
from cast_vllm.evaluation.prompted import ZERO_SHOT, PromptedDev
from cast_vllm.evaluation.steered import SteeredDev, Vectors


@dataclass
class TestRuns:
    __test__ = False                   # not a pytest class

    jobs: list[Job]
    outcomes: dict[str, list[Outcome]]   # per method, one per seed run


def chosen_dev_answers(prompted: PromptedDev, steered: SteeredDev, method: str, seed: int | None) -> Answers | None:
    """The dev answers of ``method`` at its chosen setting (None: never run on dev)."""
    if method in STEERED_METHODS:
        return steered.chosen_dev_answers(method, seed)
    return prompted.chosen_dev_answers(method)


def jobs_for_test(ctx: RunContext, data: EvalData, prompted: PromptedDev, vectors: Vectors,
              steered: SteeredDev) -> list[Job]:
    methods = ctx.cfg.methods
    jobs = [Job(ZERO_SHOT, "zero_shot", data.test, data.zero_test)]
    jobs += [Job((m,), m, data.test, prompted.test_prompts(m)) for m in ICL_METHODS if m in methods]
    for kind in vectors.kinds:
        if kind in methods:
            jobs += [vectors.job(kind, seed, steered.chosen[(kind, seed)], data, "test", (kind, seed))
                     for seed in vectors.seeds_of(kind)]
    return jobs


def run_test_phase(ctx: RunContext, data: EvalData, prompted: PromptedDev, vectors: Vectors,
                   steered: SteeredDev) -> TestRuns:
    jobs = jobs_for_test(ctx, data, prompted, vectors, steered)
    answers = ctx.run(jobs, "test", "test: all methods")
    outcomes: dict[str, list[Outcome]] = {}
    for job in jobs:
        test = answers[job.key]
        dev = chosen_dev_answers(prompted, steered, job.method, job.seed)
        outcome = ctx.assess(test, data.test, ctx.bias_for(dev, data.dev) if dev is not None else None)
        if ctx.labels is not None:
            outcome.raw_accuracy = ctx.assess(test, data.test, None).accuracy
            outcome.calibrated_accuracy = ctx.assess(test, data.test, ctx.label_bias(dev, data.dev)).accuracy
        outcomes.setdefault(job.method, []).append(outcome)
    if "calibrated_zero_shot" in ctx.cfg.methods:
        outcomes["calibrated_zero_shot"] = [calibrated_zero_shot(ctx, data, prompted, answers[ZERO_SHOT])]
    return TestRuns(jobs, outcomes)


def calibrated_zero_shot(ctx: RunContext, data: EvalData, prompted: PromptedDev, zero_test: Answers) -> Outcome:
    if ctx.labels is None:
        return ctx.assess(zero_test, data.test)
    outcome = ctx.assess(zero_test, data.test, ctx.label_bias(prompted.chosen_dev_answers("zero_shot"), data.dev))
    outcome.raw_accuracy = outcome.calibrated_accuracy = outcome.accuracy
    return outcome
