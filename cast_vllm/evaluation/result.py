"""Phase 7 of the protocol: the result, a JSON-ready dict (format ``cast-vllm-eval/1``).

Per method: accuracy (mean and std over seeds), label shares, latency, what dev chose, and a
paired significance test against zero-shot on the same test items (``stats.py``); around them
the split, the source pool, the search traces, the vectors and the configuration, so a result
file says how it was produced.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cast_vllm.evaluation import scoring
from cast_vllm.evaluation.data import EvalData
from cast_vllm.evaluation.jobs import Outcome, RunContext
from cast_vllm.evaluation.latency import NOTE as LATENCY_NOTE
from cast_vllm.evaluation.latency import MethodLatency
from cast_vllm.evaluation.methods import DESCRIPTIONS, ICL_METHODS, STEERED_METHODS
from cast_vllm.evaluation.outcomes import TestRuns
from cast_vllm.evaluation.prompted import ZERO_SHOT, PromptedDev
from cast_vllm.evaluation.source_vectors import SourceVectors
from cast_vllm.evaluation.stats import mcnemar_exact, paired_bootstrap
from cast_vllm.evaluation.steered import SteeredDev, Vectors

RESULT_FORMAT = "cast-vllm-eval/1"
#: a derived method costs what the method it is scored from costs
DERIVED_FROM = {"calibrated_zero_shot": "zero_shot"}


@dataclass
class PhaseResults:
    """What the phases produced, in protocol order."""
    ctx: RunContext
    model_path: str
    data: EvalData
    source: SourceVectors | None
    prompted: PromptedDev
    vectors: Vectors
    steered: SteeredDev
    tested: TestRuns
    latency: dict[str, MethodLatency]
    started: float                     # perf_counter at the start of the evaluation
    vector_seconds: float


def assemble_result(r: PhaseResults) -> dict[str, Any]:
    cfg, data, labels = r.ctx.cfg, r.data, r.data.labels
    label_keys = list(labels.keys) if labels else None
    methods: dict[str, dict] = {}
    significance: dict[str, dict] = {}
    zero_correct = r.tested.outcomes["zero_shot"][0].correct
    for method in cfg.methods:
        runs = r.tested.outcomes[method]
        entry = _method_entry(r, method, runs, label_keys)
        if method != "zero_shot":
            sig = {"paired_bootstrap": paired_bootstrap(np.stack([o.correct for o in runs]), zero_correct),
                   "mcnemar": [mcnemar_exact(o.correct, zero_correct) for o in runs]}
            entry["vs_zero_shot"] = sig
            significance[method] = {"delta": sig["paired_bootstrap"]["delta"],
                                    "p_bootstrap": sig["paired_bootstrap"]["p_value"],
                                    "ci95": sig["paired_bootstrap"]["ci95"],
                                    "p_mcnemar_per_seed": [x["p_value"] for x in sig["mcnemar"]]}
        if method in r.latency:
            entry["latency"] = r.latency[method].to_dict()
        if runs[0].texts is not None:
            entry["examples"] = [{"id": it.id, "input": it.input, "gold": it.answer, "output": t.strip()}
                                 for it, t in zip(data.test[:5], runs[0].texts[:5])]
        if labels is not None:
            entry["accuracy_raw"] = float(np.mean([o.raw_accuracy for o in runs]))
            entry["accuracy_calibrated"] = float(np.mean([o.calibrated_accuracy for o in runs]))
            entry["accuracy_calibrated_per_seed"] = [o.calibrated_accuracy for o in runs]
        methods[method] = entry

    cast_key = ("cast", r.vectors.seeds[0])
    chosen = r.steered.chosen
    return {
        "format": RESULT_FORMAT,
        "name": cfg.name or f"{Path(cfg.source).stem}->{Path(cfg.target).stem}",
        "model": cfg.model,
        "model_path": r.model_path,
        "source": cfg.source,
        "target": cfg.target,
        "task": data.tspec.name or data.tspec.format,
        "source_task": data.sspec.name or data.sspec.format,
        "n_test": len(data.test),
        "n_dev": len(data.dev),
        "seeds": cfg.seeds,
        "scoring": "labels" if labels else "generation",
        "labels": label_keys,
        "calibration": cfg.calibration,
        "methods": methods,
        "chosen": chosen[cast_key].to_dict() if cast_key in chosen else None,
        "significance": significance,
        "splits": {"split_seed": cfg.split_seed, "stratified": data.split.stratified, "dev_ids": data.split.dev_ids,
                   "test_ids": data.split.test_ids},
        "source_pool": {"size": len(data.pool), "excluded_overlapping": data.n_excluded,
                        "num_selected": r.source.num_selected if r.source else None, "num_demos": cfg.num_demos},
        "search": {"space": r.steered.space.describe(),
                   "traces": {f"{k}/s{s}": search.trace_dicts() for (k, s), search in r.steered.searches.items()},
                   "zero_shot_dev_accuracy": r.prompted.dev_scores[ZERO_SHOT].accuracy},
        "vectors": {f"{k}/s{sd}": {"sample_ids": b.sample_ids, "num_demos": cfg.num_demos,
                                   "norm_range": [min(b.norms().values()), max(b.norms().values())],
                                   **({"source_weights": b.source_weights} if b.source_weights else {})}
                    for (k, sd), b in r.vectors.built.items()},
        "registered_vectors": {f"{k}/s{sd}": name for (k, sd), name in r.vectors.names.items()},
        "icl_truncated_prompts": r.prompted.truncated,
        "latency": {"batch": cfg.latency_batch, "items": min(cfg.latency_items, len(data.test)),
                    "rounds": cfg.latency_rounds, "note": LATENCY_NOTE},
        "timing": {"seconds_total": time.perf_counter() - r.started, "engine_seconds": r.ctx.engine_seconds,
                   "vector_seconds": r.vector_seconds},
        "config": cfg.to_json_dict(),
    }


def _method_entry(r: PhaseResults, method: str, runs: list[Outcome], label_keys: list[str] | None) -> dict:
    """Accuracy, label shares, cost, and what dev chose for ``method``."""
    cfg = r.ctx.cfg
    accs = [o.accuracy for o in runs]
    latency = r.latency.get(method) or r.latency.get(DERIVED_FROM.get(method, ""))
    entry: dict[str, Any] = {
        "accuracy": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "accuracy_per_seed": accs,
        "label_shares": scoring.label_shares([p for o in runs for p in o.predicted], label_keys),
        "latency_ms_per_query": latency.ms_per_query if latency else None,
        "prompt_tokens_mean": float(np.mean([o.prompt_tokens for o in runs])),
        "correct": [o.correct.astype(int).tolist() for o in runs],
        "description": DESCRIPTIONS[method],
    }
    scores = r.prompted.dev_scores
    if method in ICL_METHODS:
        k = r.prompted.chosen_k[method]
        entry["chosen"] = {"k": k}
        entry["dev_accuracy"] = scores[(method, k)].accuracy
        entry["dev_accuracy_by_k"] = {str(kk): scores[(method, kk)].accuracy for kk in cfg.icl_shots}
    elif method in STEERED_METHODS:
        seeds, chosen = r.vectors.seeds, r.steered.chosen
        entry["chosen"] = chosen[(method, seeds[0])].to_dict()
        entry["chosen_per_seed"] = [chosen[(method, s)].to_dict() for s in seeds if (method, s) in chosen]
        dev = r.steered.chosen_dev_answers(method, seeds[0])
        entry["dev_accuracy"] = r.ctx.dev_score(dev, r.data.dev).accuracy if dev is not None else None
        entry["tuned"] = "own search" if method in r.steered.tuned else "cast's setting"
        entry["vector_norms"] = {str(layer): round(n, 4)
                                 for layer, n in r.vectors.built[(method, seeds[0])].norms().items()}
    elif method == "calibrated_zero_shot" and r.data.labels is not None:
        dev = r.prompted.chosen_dev_answers("zero_shot")
        entry["dev_accuracy"] = r.ctx.assess(dev, r.data.dev, r.ctx.label_bias(dev, r.data.dev)).accuracy
    else:
        entry["dev_accuracy"] = scores[ZERO_SHOT].accuracy
    return entry
