"""Running a phase's work through the engine and scoring what comes back.

A phase hands ``RunContext.run`` a list of ``Job`` (one method, or one setting of one, on a
list of items) and gets every job's ``Answers`` from one batched engine call, so unsteered,
ICL and differently steered requests share batches. ``assess`` turns answers into an
``Outcome`` (per-item correctness, predictions); ``dev_score`` is what selection on dev ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import numpy as np

from cast_vllm.evaluation import scoring
from cast_vllm.evaluation.config import EvalConfig
from cast_vllm.evaluation.engine import EvalEngine, Request
from cast_vllm.evaluation.search import DevScore
from cast_vllm.method.tasks import TaskItem


@dataclass
class Job:
    key: Hashable                      # how the phase finds this job's answers
    method: str
    items: Sequence[TaskItem]
    prompts: list[str]
    steering: Any = None               # a steering spec, None for unsteered methods
    seed: int | None = None            # the source-sample seed of a steered method's vector

    def requests(self, start: int = 0, end: int | None = None) -> list[Request]:
        return [Request(p, it.id, self.steering, self.method)
                for p, it in zip(self.prompts[start:end], self.items[start:end])]


@dataclass
class Answers:
    """One job's raw engine output: label log-probabilities or generated texts."""
    logprobs: np.ndarray | None        # [n, labels] (label scoring)
    texts: list[str] | None            # generation scoring
    prompt_tokens: float               # mean prompt length


@dataclass
class Outcome:
    correct: np.ndarray                # bool [n]
    predicted: list[str]
    texts: list[str] | None = None     # generation scoring: the answers
    prompt_tokens: float = 0.0
    raw_accuracy: float | None = None          # label scoring: without calibration
    calibrated_accuracy: float | None = None   # label scoring: with dev-set calibration

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.correct) else 0.0


@dataclass
class RunContext:
    cfg: EvalConfig
    engine: EvalEngine
    labels: scoring.LabelSet | None    # None: generation scoring
    progress: bool
    engine_seconds: float = 0.0

    def run(self, jobs: Sequence[Job], phase: str, desc: str) -> dict[Hashable, Answers]:
        """Every job's answers, from one batched engine call, keyed by job key."""
        requests, spans = [], []
        for job in jobs:
            start = len(requests)
            requests.extend(job.requests())
            spans.append((job, start, len(requests)))
        res = self.engine.run(requests, labels=self.labels, max_tokens=self.cfg.max_new_tokens, phase=phase,
                              desc=desc, progress=self.progress)
        self.engine_seconds += res.seconds
        out = {}
        for job, a, b in spans:
            toks = float(np.mean(res.prompt_tokens[a:b])) if b > a else 0.0
            if self.labels is not None:
                out[job.key] = Answers(res.logprobs[a:b], None, toks)
            else:
                out[job.key] = Answers(None, res.texts[a:b], toks)
        return out

    def assess(self, answers: Answers, items: Sequence[TaskItem], bias: np.ndarray | None = None) -> Outcome:
        if self.labels is not None:
            mask = scoring.option_mask(items, self.labels)
            gold = scoring.gold_index(items, self.labels)
            pred = scoring.predict(answers.logprobs, mask, bias)
            return Outcome(pred == gold, [self.labels.keys[i] for i in pred], prompt_tokens=answers.prompt_tokens)
        texts = answers.texts
        correct = np.array([scoring.generation_correct(t, it.answer) for t, it in zip(texts, items)], dtype=bool)
        return Outcome(correct, [scoring.first_word(t) for t in texts], texts=texts,
                       prompt_tokens=answers.prompt_tokens)

    def label_bias(self, dev_answers: Answers, dev_items: Sequence[TaskItem]) -> np.ndarray:
        """Label scoring: the dev-set calibration bias of one method at one setting."""
        return scoring.calibration_bias(dev_answers.logprobs, scoring.option_mask(dev_items, self.labels))

    def bias_for(self, dev_answers: Answers, dev_items: Sequence[TaskItem]) -> np.ndarray | None:
        """The bias the configured calibration applies (None without calibration)."""
        if self.labels is None or self.cfg.calibration != "dev":
            return None
        return self.label_bias(dev_answers, dev_items)

    def dev_score(self, dev_answers: Answers, dev_items: Sequence[TaskItem]) -> DevScore:
        bias = self.bias_for(dev_answers, dev_items)
        out = self.assess(dev_answers, dev_items, bias)
        if self.labels is None:
            return DevScore(out.accuracy, 0.0)
        mask = scoring.option_mask(dev_items, self.labels)
        gold = scoring.gold_index(dev_items, self.labels)
        return DevScore(out.accuracy, scoring.gold_margin(dev_answers.logprobs, mask, gold, bias))
