"""Phase 6 of the protocol (latency): per-query latency of each method in one engine.

Per method (seed 0 for steered ones): its first ``latency_items`` test prompts in batches of
``latency_batch``, ``latency_rounds`` times. The methods are interleaved batch by batch
(rotating who goes first) so load changes on a shared machine hit them alike; ``ms_per_query``
is the median over all timed batches of batch time / batch size, robust to load spikes
(``min_ms_per_query`` is the least disturbed batch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from cast_vllm.evaluation.jobs import Job, RunContext

NOTE = ("median over batches of batch time / batch size; methods interleaved batch by batch in one engine; "
        "prefix caching off")


@dataclass
class MethodLatency:
    ms_per_query: float
    min_ms_per_query: float
    mean_ms_per_query: float
    batches: int
    prompt_tokens_mean: float

    def to_dict(self) -> dict:
        return asdict(self)


def measure_latency(ctx: RunContext, test_jobs: Sequence[Job]) -> dict[str, MethodLatency]:
    cfg = ctx.cfg
    first: dict[str, Job] = {}
    for job in test_jobs:
        first.setdefault(job.method, job)
    n = min(cfg.latency_items, len(test_jobs[0].items))
    if n == 0:
        return {}
    per_query: dict[str, list[float]] = {m: [] for m in first}
    tokens: dict[str, list[int]] = {m: [] for m in first}
    methods = list(first)
    turn = 0
    for _ in range(cfg.latency_rounds):
        for start in range(0, n, cfg.latency_batch):
            end = min(n, start + cfg.latency_batch)
            order = methods[turn % len(methods):] + methods[:turn % len(methods)]
            turn += 1
            for m in order:
                res = ctx.engine.run(first[m].requests(start, end), labels=ctx.labels, max_tokens=cfg.max_new_tokens,
                                     phase="latency", progress=False)
                per_query[m].append(res.seconds / (end - start))
                tokens[m].extend(res.prompt_tokens)
    return {m: MethodLatency(ms_per_query=1000.0 * float(np.median(per_query[m])),
                             min_ms_per_query=1000.0 * float(np.min(per_query[m])),
                             mean_ms_per_query=1000.0 * float(np.mean(per_query[m])),
                             batches=len(per_query[m]), prompt_tokens_mean=float(np.mean(tokens[m])))
            for m in methods}
