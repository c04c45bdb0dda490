"""How an answer is scored: label-word log-probabilities or greedy generation.

**Label scoring** (sentiment, multiple choice, and pairs whose outputs form a small closed set
such as AG News topics): each label's completion text (``" positive"``, ``" B"``,
``" Sports"``) is tokenized on its own and its *first* token is the label's token. The engine
returns the exact log-probability of every label token at the answer position
(vLLM ``SamplingParams(max_tokens=1, logprob_token_ids=[...])``: log-softmax of the raw
logits over the full vocabulary, not a top-K list, so no label is ever missing). The
prediction is the label with the highest log-probability among the item's options. Labels
whose first tokens coincide cannot be told apart this way and are refused.

Optional **calibration** (``calibration="dev"``, Batch Calibration, Zhou et al. 2024): the
label distribution renormalised over the options is divided by its mean over the dev items of
the same method and setting, ``argmax_l p(l|x) / mean_dev p(l)``; it removes a constant
label bias (small models lean to one label) and is applied to every method alike.

**Generation scoring** (open-vocabulary pairs): greedy decoding up to a newline; correct when
the stripped text starts with the gold output, case-insensitively, at a word boundary (gold
``"cold"`` accepts ``"cold."`` and ``"Cold weather"``, not ``"colder"``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from cast_vllm.errors import CastVllmError
from cast_vllm.method.tasks import LETTERS, TaskItem, TaskSpec

CALIBRATIONS = ("none", "dev")
SCORINGS = ("auto", "labels", "generate")


class ScoringError(CastVllmError, ValueError):
    """Answers cannot be scored as asked (clashing label tokens, missing log-probabilities)."""


@dataclass(frozen=True)
class LabelSet:
    keys: tuple[str, ...]            # label keys, e.g. ("positive", "negative") or ("A", "B", "C", "D")
    completions: tuple[str, ...]     # the text after the answer prefix
    token_ids: tuple[int, ...]       # first token of each completion

    def index(self, key: str) -> int:
        return self.keys.index(key)


def label_keys(items: Sequence[TaskItem]) -> tuple[str, ...]:
    """Every label key any item offers: option letters in order, sentiment's two labels, or a
    closed pairs task's sorted outputs."""
    if items and items[0].options:
        keys: list[str] = []
        for it in items:
            for k in it.options:
                if k not in keys:
                    keys.append(k)
        if all(k in LETTERS for k in keys):
            keys.sort(key=LETTERS.index)
        return tuple(keys)
    return tuple(sorted({it.answer for it in items}))


def make_label_set(spec: TaskSpec, items: Sequence[TaskItem], tokenizer: Any) -> LabelSet:
    keys = label_keys(items)
    if len(keys) < 2:
        raise ScoringError(f"label scoring needs at least 2 labels, the target has {list(keys)}")
    probe = items[0]
    completions = tuple(spec.completion_for(probe, k) for k in keys)
    token_ids = []
    for key, text in zip(keys, completions):
        ids = tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise ScoringError(f"label {key!r} (completion {text!r}) tokenizes to nothing")
        token_ids.append(int(ids[0]))
    clash = [k for k, n in Counter(token_ids).items() if n > 1]
    if clash:
        names = [keys[i] for i, t in enumerate(token_ids) if t in clash]
        raise ScoringError(f"labels {names} share their first token ({clash}); first-token scoring cannot tell "
                           "them apart: use a task file with distinct label words, or --scoring generate")
    return LabelSet(keys, completions, tuple(token_ids))


def option_mask(items: Sequence[TaskItem], labels: LabelSet) -> np.ndarray:
    """``[items, labels]`` bool: which labels each item may be answered with."""
    mask = np.zeros((len(items), len(labels.keys)), dtype=bool)
    for i, it in enumerate(items):
        if it.options:
            for k in it.options:
                mask[i, labels.index(k)] = True
        else:
            mask[i, :] = True
    return mask


def gold_index(items: Sequence[TaskItem], labels: LabelSet) -> np.ndarray:
    try:
        return np.array([labels.index(it.answer) for it in items], dtype=np.int64)
    except ValueError:
        bad = next(it for it in items if it.answer not in labels.keys)
        raise ScoringError(f"item {bad.id}: gold answer {bad.answer!r} is not one of the labels {list(labels.keys)}")


def label_logprobs(outputs: Sequence[Any], labels: LabelSet) -> np.ndarray:
    """``[n, labels]`` log-probabilities of the label tokens from vLLM ``RequestOutput``s made
    with ``logprob_token_ids=labels.token_ids``."""
    out = np.empty((len(outputs), len(labels.token_ids)), dtype=np.float64)
    for i, o in enumerate(outputs):
        steps = o.outputs[0].logprobs
        if not steps:
            raise ScoringError(f"request {o.request_id} returned no log-probabilities")
        first = steps[0]
        for j, tok in enumerate(labels.token_ids):
            lp = first.get(tok)
            if lp is None:
                raise ScoringError(f"request {o.request_id}: no log-probability for label token {tok} "
                                   f"({labels.keys[j]!r})")
            out[i, j] = lp.logprob
    return out


def normalise(logprobs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Log-softmax over each item's allowed labels (others -inf)."""
    x = np.where(mask, logprobs, -np.inf)
    m = x.max(axis=1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))


def calibration_bias(dev_logprobs: np.ndarray, dev_mask: np.ndarray) -> np.ndarray:
    """Log of each label's mean renormalised probability over the dev items offering it."""
    p = np.exp(normalise(dev_logprobs, dev_mask))
    counts = dev_mask.sum(axis=0)
    mean = np.where(counts > 0, np.where(dev_mask, p, 0.0).sum(axis=0) / np.maximum(counts, 1), 1.0)
    return np.log(np.maximum(mean, 1e-12))


def predict(logprobs: np.ndarray, mask: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Index of the predicted label per item (ties: the first)."""
    x = normalise(logprobs, mask)
    if bias is not None:
        x = x - bias[None, :]
    return np.argmax(np.where(mask, x, -np.inf), axis=1)


def gold_margin(logprobs: np.ndarray, mask: np.ndarray, gold: np.ndarray, bias: np.ndarray | None = None) -> float:
    """Mean renormalised log-probability of the gold label: a smooth tie-breaker for dev
    selection (higher is better)."""
    x = normalise(logprobs, mask)
    if bias is not None:
        x = normalise(x - bias[None, :], mask)
    return float(x[np.arange(len(gold)), gold].mean())


def generation_correct(text: str, gold: str) -> bool:
    t, g = text.strip().lower(), gold.strip().lower()
    if not g or not t.startswith(g):
        return False
    return len(t) == len(g) or not t[len(g)].isalnum()


def first_word(text: str) -> str:
    parts = text.strip().split()
    return parts[0].strip(".,;:!?\"'").lower() if parts else ""


def label_shares(predicted: Sequence[str], labels: Sequence[str] | None = None, top: int = 5) -> dict[str, float]:
    """Share of each predicted label. With ``labels`` (closed set) every label is listed;
    otherwise the ``top`` most frequent predictions plus ``<other>``."""
    n = len(predicted)
    if n == 0:
        return {}
    counts = Counter(predicted)
    if labels is not None:
        shares = {k: counts.get(k, 0) / n for k in labels}
        rest = n - sum(counts.get(k, 0) for k in labels)
        if rest:
            shares["<other>"] = rest / n
        return shares
    shares = {k: c / n for k, c in counts.most_common(top)}
    rest = n - sum(c for _, c in counts.most_common(top))
    if rest:
        shares["<other>"] = rest / n
    return shares
