"""One source -> target evaluation: every method on identical test items through one engine.

Protocol (notes/cast-method.md, issue 6):

1. the target is split once into dev and test (``splits.py``, fixed seed); the source pool
   excludes every target dev/test text;
2. *dev phase* (selection only ever sees dev items): zero-shot on dev; ``icl`` and
   ``target_icl`` for each number of demonstrations ``k`` (``target_icl`` draws its demos from
   the other dev items); the steered methods' coordinate search (``search.py``). The best
   ``k`` and the best setting are chosen on dev accuracy;
3. *test phase*: every method at its chosen hyper-parameters on the same test items, in one
   batched engine call; the steered methods for every seed of the source sample;
4. *latency phase*: the first ``latency_items`` test items of each method in batches of
   ``latency_batch``, the methods interleaved batch by batch so machine load hits them alike;
5. accuracy (mean and std over seeds), label shares, and a paired significance test of each
   method against zero-shot on the same items (``stats.py``).

Seeds vary the source sample (IDEAL's Monte Carlo cascades, random selection, demonstration
assignment) and the random control; the split is fixed. By default the search runs on seed
0's vector and the chosen setting is reused for the other seeds (``tune_each_seed`` searches
every seed); ``ablation_settings="cast"`` gives ``cast_random_selection`` and ``mean_diff``
CAST's chosen setting instead of their own search (cheaper; the vectors are then compared at
equal settings). ``random_vector`` always uses CAST's setting of the same seed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cast_vllm.evaluation import scoring
from cast_vllm.evaluation.engine import EvalEngine, Request
from cast_vllm.evaluation.methods import (
    DESCRIPTIONS, ICL_METHODS, METHODS, STEERED_METHODS, TUNED_STEERED, cross_task_prompt, parse_methods, retrieve,
    zero_shot_prompt,
)
from cast_vllm.evaluation.search import CoordinateSearch, DevScore, SearchSpace, Setting
from cast_vllm.evaluation.source_vectors import ActivationCache, SourceVectors
from cast_vllm.evaluation.splits import is_closed_label_task, source_pool, split_target
from cast_vllm.evaluation.stats import mcnemar_exact, paired_bootstrap
from cast_vllm.method.tasks import TaskItem, TaskSpec, load_task, load_task_spec

logger = logging.getLogger(__name__)

RESULT_FORMAT = "cast-vllm-eval/1"


class EvalConfigError(ValueError):
    """An evaluation that cannot run as configured; the message names the setting."""


@dataclass
class EvalConfig:
    model: str
    source: str
    target: str
    task: str = "sentiment"                 # target task format or task file
    source_task: str | None = None          # default: task
    methods: Sequence[str] = METHODS
    seeds: int = 3
    n_test: int = 400
    n_dev: int = 100
    split_seed: int = 0
    pool_size: int = 128
    num_selected: int = 32
    num_demos: int = 4                      # demonstrations per few-shot prompt when building vectors
    icl_shots: Sequence[int] = (1, 2, 4)    # candidates for k, chosen on dev
    alphas: Sequence[float] = (1.0, 0.5, 2.0, 4.0)
    modes: Sequence[str] = ("norm_preserving", "add")
    positions: Sequence[str] = ("last_prompt", "all")
    layer_fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5)
    layer_width: int | None = None
    vary_width: bool = True
    tune_each_seed: bool = False
    ablation_settings: str = "own"          # own | cast
    calibration: str = "none"               # none | dev
    scoring: str = "auto"                   # auto | labels | generate
    max_labels: int = 16
    max_new_tokens: int = 8
    latency_items: int = 64
    latency_batch: int = 16
    latency_rounds: int = 3
    name: str = ""

    def validate(self) -> None:
        self.methods = parse_methods(self.methods)
        if self.seeds < 1:
            raise EvalConfigError(f"seeds must be >= 1, got {self.seeds}")
        if self.calibration not in scoring.CALIBRATIONS:
            raise EvalConfigError(f"calibration must be one of {scoring.CALIBRATIONS}, got {self.calibration!r}")
        if self.scoring not in scoring.SCORINGS:
            raise EvalConfigError(f"scoring must be one of {scoring.SCORINGS}, got {self.scoring!r}")
        if self.ablation_settings not in ("own", "cast"):
            raise EvalConfigError(f"ablation_settings must be 'own' or 'cast', got {self.ablation_settings!r}")
        if not self.icl_shots or any(k < 1 for k in self.icl_shots):
            raise EvalConfigError(f"icl_shots must be positive integers, got {list(self.icl_shots)}")
        if max(self.icl_shots) >= self.n_dev and "target_icl" in self.methods:
            raise EvalConfigError(f"target_icl needs n_dev > max(icl_shots) = {max(self.icl_shots)}")
        if self.pool_size and self.pool_size < self.num_selected:
            raise EvalConfigError(f"pool_size {self.pool_size} is smaller than num_selected {self.num_selected}")
        if self.latency_batch < 1 or self.latency_items < 0 or self.latency_rounds < 1:
            raise EvalConfigError("latency_batch and latency_rounds must be >= 1 and latency_items >= 0")
        for path, what in ((self.source, "source"), (self.target, "target")):
            if not Path(path).is_file():
                raise EvalConfigError(f"{what} file {path} does not exist")


@dataclass
class _Job:
    key: tuple
    method: str
    items: Sequence[TaskItem]
    prompts: list[str]
    steering: Any = None


@dataclass
class _Outcome:
    correct: np.ndarray                # bool [n]
    predicted: list[str]
    logprobs: np.ndarray | None = None
    texts: list[str] | None = None
    prompt_tokens: float = 0.0

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.correct) else 0.0


@dataclass
class _Context:
    cfg: EvalConfig
    engine: EvalEngine
    tspec: TaskSpec
    sspec: TaskSpec
    labels: scoring.LabelSet | None
    progress: bool
    engine_seconds: float = 0.0

    def run(self, jobs: Sequence[_Job], phase: str, desc: str) -> dict[tuple, _Job | Any]:
        """Run jobs in one batched engine call; raw per-job results keyed by job key."""
        requests, spans = [], []
        for job in jobs:
            start = len(requests)
            requests.extend(Request(p, it.id, job.steering, job.method) for p, it in zip(job.prompts, job.items))
            spans.append((job, start, len(requests)))
        res = self.engine.run(requests, labels=self.labels, max_tokens=self.cfg.max_new_tokens, phase=phase,
                              desc=desc, progress=self.progress)
        self.engine_seconds += res.seconds
        out = {}
        for job, a, b in spans:
            toks = float(np.mean(res.prompt_tokens[a:b])) if b > a else 0.0
            if self.labels is not None:
                out[job.key] = (res.logprobs[a:b], None, toks)
            else:
                out[job.key] = (None, res.texts[a:b], toks)
        return out

    def assess(self, raw, items: Sequence[TaskItem], bias: np.ndarray | None = None) -> _Outcome:
        logprobs, texts, toks = raw
        if self.labels is not None:
            mask = scoring.option_mask(items, self.labels)
            gold = scoring.gold_index(items, self.labels)
            pred = scoring.predict(logprobs, mask, bias)
            return _Outcome(pred == gold, [self.labels.keys[i] for i in pred], logprobs=logprobs, prompt_tokens=toks)
        correct = np.array([scoring.generation_correct(t, it.answer) for t, it in zip(texts, items)], dtype=bool)
        return _Outcome(correct, [scoring.first_word(t) for t in texts], texts=texts, prompt_tokens=toks)

    def bias_for(self, dev_raw, dev_items) -> np.ndarray | None:
        if self.labels is None or self.cfg.calibration != "dev":
            return None
        return scoring.calibration_bias(dev_raw[0], scoring.option_mask(dev_items, self.labels))

    def dev_score(self, dev_raw, dev_items) -> DevScore:
        bias = self.bias_for(dev_raw, dev_items)
        out = self.assess(dev_raw, dev_items, bias)
        if self.labels is None:
            return DevScore(out.accuracy, 0.0)
        mask = scoring.option_mask(dev_items, self.labels)
        gold = scoring.gold_index(dev_items, self.labels)
        return DevScore(out.accuracy, scoring.gold_margin(dev_raw[0], mask, gold, bias))


def _fit_demos(engine: EvalEngine, item: TaskItem, demos: list[TaskItem], tspec: TaskSpec, sspec: TaskSpec,
               reserve: int) -> tuple[str, int]:
    """The ICL prompt with as many of ``demos`` as fit the context (least similar dropped first)."""
    demos = list(demos)
    dropped = 0
    while True:
        prompt = cross_task_prompt(item, demos, tspec, sspec)
        if not demos or engine.count_tokens(prompt) + reserve <= engine.max_model_len:
            return prompt, dropped
        demos.pop(0)
        dropped += 1


def evaluate(cfg: EvalConfig, engine: EvalEngine | None = None, acts: ActivationCache | None = None,
             progress: bool = True) -> dict:
    """Run the protocol (module doc) and return the result dictionary (JSON-ready)."""
    from cast_vllm.method.activations import HFActivationReader, ReaderConfig
    from cast_vllm.model_zoo import resolve

    cfg.validate()
    t_start = time.perf_counter()
    model_path = resolve(cfg.model)
    own_engine = engine is None
    if engine is None:
        engine = EvalEngine(str(model_path))
    if acts is None:
        reader = HFActivationReader(ReaderConfig(str(model_path), tuple(range(engine.num_layers)), backend="hf",
                                                 batch_size=16))
        acts = ActivationCache(reader, engine.tokenizer, progress=progress)
    try:
        return _evaluate(cfg, engine, acts, str(model_path), progress, t_start)
    finally:
        if own_engine:
            engine.close()


def _evaluate(cfg: EvalConfig, engine: EvalEngine, acts: ActivationCache, model_path: str, progress: bool,
              t_start: float) -> dict:
    methods = list(cfg.methods)
    seeds = list(range(cfg.seeds))
    tspec = load_task_spec(cfg.task)
    sspec = load_task_spec(cfg.source_task or cfg.task)
    target_items = load_task(cfg.target, tspec)
    source_items = load_task(cfg.source, sspec)
    split = split_target(target_items, cfg.n_dev, cfg.n_test, cfg.split_seed)
    dev, test = list(split.dev), list(split.test)
    pool, n_excluded = source_pool(source_items, dev + test, cfg.pool_size, cfg.split_seed)
    closed = is_closed_label_task(target_items, cfg.max_labels)
    if cfg.scoring == "labels" and not closed:
        raise EvalConfigError(f"{cfg.target}: {len({it.answer for it in target_items})} distinct outputs; label "
                              f"scoring needs at most {cfg.max_labels} (use --scoring generate)")
    use_labels = cfg.scoring == "labels" or (cfg.scoring == "auto" and closed)
    labels = scoring.make_label_set(tspec, target_items, engine.tokenizer) if use_labels else None
    ctx = _Context(cfg, engine, tspec, sspec, labels, progress)
    num_layers = engine.num_layers
    logger.info("%s: %d dev, %d test target items, source pool %d (%d excluded), scoring %s",
                cfg.name or Path(cfg.target).stem, len(dev), len(test), len(pool), n_excluded,
                "labels " + str(list(labels.keys)) if labels else "generation")

    needs_vectors = any(m in STEERED_METHODS for m in methods)
    needs_retrieval = any(m in ICL_METHODS for m in methods)
    sv = None
    t_acts = time.perf_counter()
    if needs_vectors or "icl" in methods:
        sv = SourceVectors(acts, pool, sspec, num_layers=num_layers, num_selected=min(cfg.num_selected, len(pool)),
                           num_demos=cfg.num_demos, model=cfg.model, name=Path(cfg.source).stem)
    if needs_retrieval:
        sel = sv.selection_layer if sv else num_layers // 2
        target_states = acts.read([zero_shot_prompt(it, tspec) for it in dev + test], desc="target zero-shot states")
        dev_emb, test_emb = target_states[:len(dev), sel], target_states[len(dev):, sel]

    # ---- dev phase A: zero-shot and ICL variants -------------------------------------------
    zero_dev = [zero_shot_prompt(it, tspec) for it in dev]
    zero_test = [zero_shot_prompt(it, tspec) for it in test]
    jobs = [_Job(("zero_shot",), "zero_shot", dev, zero_dev)]
    icl_prompts: dict[tuple, list[str]] = {}
    truncated: dict[str, int] = {}
    reserve = 1 if labels else cfg.max_new_tokens
    if "icl" in methods:
        pool_emb = sv.embeddings()
        for k in cfg.icl_shots:
            kk = min(k, len(pool))
            for part, items, emb in (("dev", dev, dev_emb), ("test", test, test_emb)):
                idx = retrieve(emb, pool_emb, kk)
                fitted = [_fit_demos(engine, it, [pool[j] for j in d], tspec, sspec, reserve) for it, d in zip(items, idx)]
                icl_prompts[("icl", k, part)] = [p for p, _ in fitted]
                truncated[f"icl_k{k}_{part}"] = sum(1 for _, n in fitted if n)
            jobs.append(_Job(("icl", k), "icl", dev, icl_prompts[("icl", k, "dev")]))
    if "target_icl" in methods:
        for k in cfg.icl_shots:
            idx_dev = retrieve(dev_emb, dev_emb, k, exclude=[[i] for i in range(len(dev))])
            idx_test = retrieve(test_emb, dev_emb, k)
            for part, items, idx in (("dev", dev, idx_dev), ("test", test, idx_test)):
                fitted = [_fit_demos(engine, it, [dev[j] for j in d], tspec, tspec, reserve) for it, d in zip(items, idx)]
                icl_prompts[("target_icl", k, part)] = [p for p, _ in fitted]
                truncated[f"target_icl_k{k}_{part}"] = sum(1 for _, n in fitted if n)
            jobs.append(_Job(("target_icl", k), "target_icl", dev, icl_prompts[("target_icl", k, "dev")]))
    dev_raw = ctx.run(jobs, "dev", "dev: zero-shot and ICL")
    dev_scores = {key: ctx.dev_score(raw, dev) for key, raw in dev_raw.items()}
    chosen_k = {}
    for m in ICL_METHODS:
        if m in methods:
            cands = [(dev_scores[(m, k)].key(), -i, k) for i, k in enumerate(cfg.icl_shots)]
            chosen_k[m] = max(cands)[2]

    # ---- vectors ---------------------------------------------------------------------------
    vectors: dict[tuple[str, int], Any] = {}
    vector_names: dict[tuple[str, int], str] = {}
    tag = "ev-" + hashlib.sha256(repr((cfg.name, cfg.source, cfg.target, cfg.split_seed)).encode()).hexdigest()[:10]
    kinds = [k for k in ("cast", "cast_random_selection", "mean_diff") if k in methods
             or (k == "cast" and "random_vector" in methods)]
    if "random_vector" in methods:
        kinds.append("random_vector")

    def kind_seeds(kind: str) -> list[int]:
        return seeds[:1] if kind == "mean_diff" else seeds   # the whole pool: no sample to vary

    for kind in kinds:
        for seed in kind_seeds(kind):
            built = sv.build(kind, seed)
            vectors[(kind, seed)] = built
            vector_names[(kind, seed)] = engine.register(f"{tag}-{kind}-s{seed}", built.vector)
    activation_seconds = time.perf_counter() - t_acts

    # ---- dev phase B: steered searches -------------------------------------------------------
    space = SearchSpace.for_model(num_layers, fractions=tuple(cfg.layer_fractions), width=cfg.layer_width,
                                  alphas=tuple(cfg.alphas), modes=tuple(cfg.modes), positions=tuple(cfg.positions),
                                  vary_width=cfg.vary_width)
    tuned = [k for k in TUNED_STEERED if k in kinds and (k == "cast" or cfg.ablation_settings == "own")]
    searches: dict[tuple[str, int], CoordinateSearch] = {
        (kind, seed): CoordinateSearch(space) for kind in tuned
        for seed in (kind_seeds(kind) if cfg.tune_each_seed else seeds[:1])}
    dev_by_setting: dict[tuple, Any] = {}
    round_ = 0
    while searches:
        batch = []
        for key, search in searches.items():
            for setting in search.propose():
                batch.append(_Job((key, setting), key[0], dev, zero_dev, setting.spec(vector_names[key])))
        if not batch:
            break
        round_ += 1
        raw = ctx.run(batch, "dev", f"dev: steering search stage {round_}")
        dev_by_setting.update(raw)
        for key, search in searches.items():
            if search.pending:
                search.tell([ctx.dev_score(raw[(key, s)], dev) for s in search.pending])
    chosen: dict[tuple[str, int], Setting] = {}
    for kind in kinds:
        if kind == "random_vector":
            continue
        for seed in kind_seeds(kind):
            if (kind, seed) in searches:
                chosen[(kind, seed)] = searches[(kind, seed)].best[0]
            elif kind in tuned:
                chosen[(kind, seed)] = searches[(kind, seeds[0])].best[0]
            else:   # ablation_settings == "cast"
                chosen[(kind, seed)] = chosen.get(("cast", seed)) or searches[("cast", seeds[0])].best[0]
    if "random_vector" in kinds:
        for seed in seeds:
            chosen[("random_vector", seed)] = chosen[("cast", seed)]
    # dev runs at chosen settings the search did not score: calibration biases (label scoring)
    extra = []
    if labels is not None:
        for (kind, seed), setting in chosen.items():
            key = ((kind, seed), setting)
            if key not in dev_by_setting:
                extra.append(_Job(key, kind, dev, zero_dev, setting.spec(vector_names[(kind, seed)])))
        if extra:
            dev_by_setting.update(ctx.run(extra, "dev", "dev: calibration runs"))

    # ---- test phase --------------------------------------------------------------------------
    test_jobs = [_Job(("zero_shot",), "zero_shot", test, zero_test)]
    for m in ICL_METHODS:
        if m in methods:
            test_jobs.append(_Job((m,), m, test, icl_prompts[(m, chosen_k[m], "test")]))
    for kind in kinds:
        if kind not in methods:
            continue
        for seed in kind_seeds(kind):
            test_jobs.append(_Job((kind, seed), kind, test, zero_test,
                                  chosen[(kind, seed)].spec(vector_names[(kind, seed)])))
    test_raw = ctx.run(test_jobs, "test", "test: all methods")

    def dev_raw_for(method: str, seed: int | None):
        if method == "zero_shot":
            return dev_raw[("zero_shot",)]
        if method in ICL_METHODS:
            return dev_raw[(method, chosen_k[method])]
        return dev_by_setting.get(((method, seed), chosen[(method, seed)]))

    outcomes: dict[str, list[_Outcome]] = {}
    alt_accuracy: dict[str, dict[str, list[float]]] = {}   # labels only: raw and calibrated, per seed
    for job in test_jobs:
        method = job.method
        seed = job.key[1] if method in STEERED_METHODS else None
        d = dev_raw_for(method, seed)
        bias = ctx.bias_for(d, dev) if d is not None else None
        outcomes.setdefault(method, []).append(ctx.assess(test_raw[job.key], test, bias))
        if labels is not None:
            cal = scoring.calibration_bias(d[0], scoring.option_mask(dev, labels))
            alt = alt_accuracy.setdefault(method, {"raw": [], "calibrated": []})
            alt["raw"].append(ctx.assess(test_raw[job.key], test, None).accuracy)
            alt["calibrated"].append(ctx.assess(test_raw[job.key], test, cal).accuracy)

    # ---- latency phase -------------------------------------------------------------------------
    latency = _measure_latency(ctx, test_jobs, cfg) if cfg.latency_items > 0 else {}

    # ---- assemble --------------------------------------------------------------------------------
    zero_correct = outcomes["zero_shot"][0].correct
    label_keys = list(labels.keys) if labels else None
    result_methods = {}
    significance = {}
    for method in methods:
        runs = outcomes[method]
        accs = [o.accuracy for o in runs]
        preds = [p for o in runs for p in o.predicted]
        entry: dict[str, Any] = {
            "accuracy": float(np.mean(accs)),
            "accuracy_std": float(np.std(accs)),
            "accuracy_per_seed": accs,
            "label_shares": scoring.label_shares(preds, label_keys),
            "latency_ms_per_query": latency.get(method, {}).get("ms_per_query"),
            "prompt_tokens_mean": float(np.mean([o.prompt_tokens for o in runs])),
            "correct": [o.correct.astype(int).tolist() for o in runs],
            "description": DESCRIPTIONS[method],
        }
        if method in ICL_METHODS:
            entry["chosen"] = {"k": chosen_k[method]}
            entry["dev_accuracy"] = dev_scores[(method, chosen_k[method])].accuracy
            entry["dev_accuracy_by_k"] = {str(k): dev_scores[(method, k)].accuracy for k in cfg.icl_shots}
        elif method in STEERED_METHODS:
            entry["chosen"] = chosen[(method, seeds[0])].to_dict()
            entry["chosen_per_seed"] = [chosen[(method, s)].to_dict() for s in seeds if (method, s) in chosen]
            d = dev_raw_for(method, seeds[0])
            entry["dev_accuracy"] = ctx.dev_score(d, dev).accuracy if d is not None else None
            entry["tuned"] = ("own search" if method in tuned else "cast's setting")
            entry["vector_norms"] = {str(layer): round(n, 4) for layer, n in vectors[(method, seeds[0])].norms().items()}
        else:
            entry["dev_accuracy"] = dev_scores[("zero_shot",)].accuracy
        if method != "zero_shot":
            sig = {"paired_bootstrap": paired_bootstrap(np.stack([o.correct for o in runs]), zero_correct),
                   "mcnemar": [mcnemar_exact(o.correct, zero_correct) for o in runs]}
            entry["vs_zero_shot"] = sig
            significance[method] = {"delta": sig["paired_bootstrap"]["delta"],
                                    "p_bootstrap": sig["paired_bootstrap"]["p_value"],
                                    "ci95": sig["paired_bootstrap"]["ci95"],
                                    "p_mcnemar_per_seed": [x["p_value"] for x in sig["mcnemar"]]}
        if method in latency:
            entry["latency"] = latency[method]
        if runs[0].texts is not None:
            entry["examples"] = [{"id": it.id, "input": it.input, "gold": it.answer, "output": t.strip()}
                                 for it, t in zip(test[:5], runs[0].texts[:5])]
        if method in alt_accuracy:
            entry["accuracy_raw"] = float(np.mean(alt_accuracy[method]["raw"]))
            entry["accuracy_calibrated"] = float(np.mean(alt_accuracy[method]["calibrated"]))
            entry["accuracy_calibrated_per_seed"] = alt_accuracy[method]["calibrated"]
        result_methods[method] = entry

    cast_key = ("cast", seeds[0])
    result = {
        "format": RESULT_FORMAT,
        "name": cfg.name or f"{Path(cfg.source).stem}->{Path(cfg.target).stem}",
        "model": cfg.model,
        "model_path": model_path,
        "source": cfg.source,
        "target": cfg.target,
        "task": tspec.name or tspec.format,
        "source_task": sspec.name or sspec.format,
        "n_test": len(test),
        "n_dev": len(dev),
        "seeds": cfg.seeds,
        "scoring": "labels" if labels else "generation",
        "labels": label_keys,
        "calibration": cfg.calibration,
        "methods": result_methods,
        "chosen": chosen[cast_key].to_dict() if cast_key in chosen else None,
        "significance": significance,
        "splits": {"split_seed": cfg.split_seed, "stratified": split.stratified, "dev_ids": split.dev_ids,
                   "test_ids": split.test_ids},
        "source_pool": {"size": len(pool), "excluded_overlapping": n_excluded,
                        "num_selected": sv.num_selected if sv else None, "num_demos": cfg.num_demos},
        "search": {"space": space.describe(),
                   "traces": {f"{k}/s{s}": search.trace_dicts() for (k, s), search in searches.items()},
                   "zero_shot_dev_accuracy": dev_scores[("zero_shot",)].accuracy},
        "vectors": {f"{k}/s{sd}": {"sample_ids": b.sample_ids, "num_demos": cfg.num_demos,
                                   "norm_range": [min(b.norms().values()), max(b.norms().values())]}
                    for (k, sd), b in vectors.items()},
        "registered_vectors": {f"{k}/s{sd}": name for (k, sd), name in vector_names.items()},
        "icl_truncated_prompts": truncated,
        "latency": {"batch": cfg.latency_batch, "items": min(cfg.latency_items, len(test)),
                    "rounds": cfg.latency_rounds,
                    "note": "median over batches of batch time / batch size; methods interleaved batch by batch "
                            "in one engine; prefix caching off"},
        "timing": {"seconds_total": time.perf_counter() - t_start, "engine_seconds": ctx.engine_seconds,
                   "vector_seconds": activation_seconds},
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    }
    return result


def _measure_latency(ctx: _Context, test_jobs: Sequence[_Job], cfg: EvalConfig) -> dict[str, dict]:
    """Per method (seed 0 for steered ones): its first ``latency_items`` test prompts in
    batches of ``latency_batch``, ``latency_rounds`` times. The methods are interleaved batch
    by batch (rotating who goes first) so load changes on a shared machine hit them alike;
    ``ms_per_query`` is the median over all timed batches of batch time / batch size, robust to
    load spikes (``min_ms_per_query`` is the least disturbed batch)."""
    first: dict[str, _Job] = {}
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
                job = first[m]
                reqs = [Request(p, it.id, job.steering, m)
                        for p, it in zip(job.prompts[start:end], job.items[start:end])]
                res = ctx.engine.run(reqs, labels=ctx.labels, max_tokens=cfg.max_new_tokens, phase="latency",
                                     progress=False)
                per_query[m].append(res.seconds / (end - start))
                tokens[m].extend(res.prompt_tokens)
    return {m: {"ms_per_query": 1000.0 * float(np.median(per_query[m])),
                "min_ms_per_query": 1000.0 * float(np.min(per_query[m])),
                "mean_ms_per_query": 1000.0 * float(np.mean(per_query[m])),
                "batches": len(per_query[m]), "prompt_tokens_mean": float(np.mean(tokens[m]))}
            for m in methods}
