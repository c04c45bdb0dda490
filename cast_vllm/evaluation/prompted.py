"""Phase 2 of the protocol (dev phase A): the unsteered methods on dev.

Zero-shot, and for each candidate number of demonstrations ``k`` the two in-context methods:
``icl`` (``k`` retrieved *source* pool items) and ``target_icl`` (``k`` retrieved *other dev*
items, the upper reference). Their test prompts are built here too, so one retrieval serves
both parts; the test prompts of the ``k`` not chosen are never run. Every dev prompt runs in
one engine call and each method's ``k`` is chosen on dev accuracy (ties: the smaller ``k``
listed first). Demonstrations that do not fit the context are dropped, least similar first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

from cast_vllm.evaluation.data import EvalData
from cast_vllm.evaluation.engine import EvalEngine
from cast_vllm.evaluation.jobs import Answers, Job, RunContext
from cast_vllm.evaluation.methods import ICL_METHODS, cross_task_prompt, retrieve, zero_shot_prompt
from cast_vllm.evaluation.search import DevScore
from cast_vllm.evaluation.source_vectors import ActivationCache, SourceVectors
from cast_vllm.method.tasks import TaskItem, TaskSpec

ZERO_SHOT = ("zero_shot",)


@dataclass
class ICLPrompts:
    dev: list[str]
    test: list[str]


@dataclass
class PromptedDev:
    dev_answers: dict[Hashable, Answers]   # ("zero_shot",) and (method, k)
    dev_scores: dict[Hashable, DevScore]
    icl_prompts: dict[tuple[str, int], ICLPrompts]
    truncated: dict[str, int]              # "<method>_k<k>_<part>": prompts that lost demonstrations
    chosen_k: dict[str, int]

    def test_prompts(self, method: str) -> list[str]:
        return self.icl_prompts[(method, self.chosen_k[method])].test

    def chosen_key(self, method: str) -> Hashable:
        return ZERO_SHOT if method == "zero_shot" else (method, self.chosen_k[method])

    def chosen_dev_answers(self, method: str) -> Answers:
        return self.dev_answers[self.chosen_key(method)]


def prompted_dev_phase(ctx: RunContext, data: EvalData, source: SourceVectors | None,
                       acts: ActivationCache) -> PromptedDev:
    methods = ctx.cfg.methods
    icl_methods = [m for m in ICL_METHODS if m in methods]
    jobs = [Job(ZERO_SHOT, "zero_shot", data.dev, data.zero_dev)]
    icl_prompts: dict[tuple[str, int], ICLPrompts] = {}
    truncated: dict[str, int] = {}
    if icl_methods:
        sel = source.selection_layer if source else ctx.engine.num_layers // 2
        states = acts.read([zero_shot_prompt(it, data.tspec) for it in data.dev + data.test],
                           desc="target zero-shot states")
        dev_emb, test_emb = states[:len(data.dev), sel], states[len(data.dev):, sel]
    for method in icl_methods:
        if method == "icl":     # source demonstrations, in the source format
            demo_items, demo_spec, demo_emb, exclude = data.pool, data.sspec, source.embeddings(), None
        else:                   # other dev items, never the query itself
            demo_items, demo_spec, demo_emb = data.dev, data.tspec, dev_emb
            exclude = [[i] for i in range(len(data.dev))]
        for k in ctx.cfg.icl_shots:
            kk = min(k, len(demo_items)) if method == "icl" else k
            parts = {}
            for part, items, emb, excl in (("dev", data.dev, dev_emb, exclude), ("test", data.test, test_emb, None)):
                idx = retrieve(emb, demo_emb, kk, exclude=excl)
                fitted = [fit_demos(ctx.engine, it, [demo_items[j] for j in d], data.tspec, demo_spec,
                                    _answer_reserve(ctx)) for it, d in zip(items, idx)]
                parts[part] = [p for p, _ in fitted]
                truncated[f"{method}_k{k}_{part}"] = sum(1 for _, n in fitted if n)
            icl_prompts[(method, k)] = ICLPrompts(parts["dev"], parts["test"])
            jobs.append(Job((method, k), method, data.dev, parts["dev"]))
    dev_answers = ctx.run(jobs, "dev", "dev: zero-shot and ICL")
    dev_scores = {key: ctx.dev_score(answers, data.dev) for key, answers in dev_answers.items()}
    chosen_k = {m: _best_k(dev_scores, m, ctx.cfg.icl_shots) for m in icl_methods}
    return PromptedDev(dev_answers, dev_scores, icl_prompts, truncated, chosen_k)


def _answer_reserve(ctx: RunContext) -> int:
    """Tokens an answer needs after the prompt: one label token, or the generation budget."""
    return 1 if ctx.labels else ctx.cfg.max_new_tokens


def _best_k(dev_scores: dict[Hashable, DevScore], method: str, shots) -> int:
    return max((dev_scores[(method, k)].key(), -i, k) for i, k in enumerate(shots))[2]


def fit_demos(engine: EvalEngine, item: TaskItem, demos: list[TaskItem], tspec: TaskSpec, sspec: TaskSpec,
              reserve: int) -> tuple[str, int]:
    """The ICL prompt with as many of ``demos`` as fit the context (least similar dropped
    first), and how many were dropped."""
    demos = list(demos)
    dropped = 0
    while True:
        prompt = cross_task_prompt(item, demos, tspec, sspec)
        if not demos or engine.count_tokens(prompt) + reserve <= engine.max_model_len:
            return prompt, dropped
        demos.pop(0)
        dropped += 1
