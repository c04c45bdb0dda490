"""Phase 1 of the protocol: the data. The target's fixed dev/test split, the source pool
without any target dev/test text, and how answers will be scored (label words for closed
label sets, generation otherwise)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cast_vllm.evaluation import scoring
from cast_vllm.evaluation.config import EvalConfig, EvalConfigError
from cast_vllm.evaluation.methods import zero_shot_prompt
from cast_vllm.evaluation.splits import Split, is_closed_label_task, source_pool, split_target
from cast_vllm.method.tasks import TaskItem, TaskSpec, load_task, load_task_spec

logger = logging.getLogger(__name__)


@dataclass
class EvalData:
    tspec: TaskSpec                    # target task
    sspec: TaskSpec                    # source task
    split: Split
    dev: list[TaskItem]
    test: list[TaskItem]
    pool: list[TaskItem]               # source items the vectors and ICL demos come from
    extra_pools: list[tuple[str, list[TaskItem]]]   # cast_multi_source's extra sources: (file stem, pool), likewise cleaned
    n_excluded: int                    # source items dropped for sharing a text with dev/test
    labels: scoring.LabelSet | None    # None: generation scoring
    zero_dev: list[str]                # zero-shot prompts of the dev items
    zero_test: list[str]               # and of the test items


def load_data(cfg: EvalConfig, tokenizer: Any) -> EvalData:
    tspec = load_task_spec(cfg.task)
    sspec = load_task_spec(cfg.source_task or cfg.task)
    target_items = load_task(cfg.target, tspec)
    source_items = load_task(cfg.source, sspec)
    split = split_target(target_items, cfg.n_dev, cfg.n_test, cfg.split_seed)
    dev, test = list(split.dev), list(split.test)
    pool, n_excluded = source_pool(source_items, dev + test, cfg.pool_size, cfg.split_seed)
    extra_pools = [(Path(path).stem, source_pool(load_task(path, sspec), dev + test, cfg.pool_size, cfg.split_seed)[0])
                   for path in (cfg.extra_sources if "cast_multi_source" in cfg.methods else ())]
    closed = is_closed_label_task(target_items, cfg.max_labels)
    if cfg.scoring == "labels" and not closed:
        raise EvalConfigError(f"{cfg.target}: {len({it.answer for it in target_items})} distinct outputs; label "
                              f"scoring needs at most {cfg.max_labels} (use --scoring generate)")
    use_labels = cfg.scoring == "labels" or (cfg.scoring == "auto" and closed)
    labels = scoring.make_label_set(tspec, target_items, tokenizer) if use_labels else None
    logger.info("%s: %d dev, %d test target items, source pool %d (%d excluded), scoring %s",
                cfg.name or Path(cfg.target).stem, len(dev), len(test), len(pool), n_excluded,
                "labels " + str(list(labels.keys)) if labels else "generation")
    return EvalData(tspec, sspec, split, dev, test, pool, extra_pools, n_excluded, labels,
                    zero_dev=[zero_shot_prompt(it, tspec) for it in dev],
                    zero_test=[zero_shot_prompt(it, tspec) for it in test])
