"""The default transfer suite: the issue's source -> target pairs, one engine, one report.

Sizes are chosen for a 2-core CPU (the cost is prompt tokens: the default model runs roughly
300-2000 prompt tokens/s there depending on load): per pair a fixed-seed split, 2 seeds of
the source sample, a 12-setting coordinate search on dev for CAST, and the ablation vectors
evaluated at CAST's setting. Every pair's result is written as soon as it finishes, and a
rerun with the same settings reuses finished pairs (``resume``), so an interrupted suite
picks up where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

from cast_vllm import envs
from cast_vllm.atomic import atomic_write_bytes
from cast_vllm.errors import CastVllmError
from cast_vllm.evaluation.config import EvalConfig
from cast_vllm.evaluation.methods import METHODS, parse_methods
from cast_vllm.evaluation.protocol import evaluate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    name: str
    source: str            # relative to the data root
    target: str
    task: str
    family: str            # sentiment | mc | pairs
    in_domain: bool = False
    extra_sources: tuple[str, ...] = ()   # cast_multi_source: other sources of the target's family


DEFAULT_PAIRS: tuple[Pair, ...] = (
    Pair("movies->movies", "sentiment/movies.jsonl", "sentiment/movies.jsonl", "sentiment", "sentiment", True),
    Pair("movies->tweets", "sentiment/movies.jsonl", "sentiment/tweets.jsonl", "sentiment", "sentiment",
         extra_sources=("sentiment/amazon.jsonl",)),
    Pair("movies->amazon", "sentiment/movies.jsonl", "sentiment/amazon.jsonl", "sentiment", "sentiment",
         extra_sources=("sentiment/tweets.jsonl",)),
    Pair("arc_easy->arc_challenge", "mc/arc_easy.jsonl", "mc/arc_challenge.jsonl", "mc", "mc",
         extra_sources=("mc/commonsense_qa.jsonl", "mc/boolq.jsonl")),
    Pair("commonsense_qa->openbook_qa", "mc/commonsense_qa.jsonl", "mc/openbook_qa.jsonl", "mc", "mc",
         extra_sources=("mc/arc_easy.jsonl", "mc/boolq.jsonl")),
    Pair("arc_easy->piqa", "mc/arc_easy.jsonl", "mc/piqa.jsonl", "mc", "mc",
         extra_sources=("mc/commonsense_qa.jsonl", "mc/boolq.jsonl")),
    Pair("boolq->arc_challenge", "mc/boolq.jsonl", "mc/arc_challenge.jsonl", "mc", "mc",
         extra_sources=("mc/arc_easy.jsonl", "mc/commonsense_qa.jsonl")),
    Pair("fv_sentiment->ag_news", "function_vectors/sentiment.json", "function_vectors/ag_news.json", "pairs",
         "pairs", extra_sources=("function_vectors/antonym.json",)),
    Pair("english-spanish->english-french", "function_vectors/english-spanish.json",
         "function_vectors/english-french.json", "pairs", "pairs",
         extra_sources=("function_vectors/english-german.json",)),
    Pair("antonym->country-capital", "function_vectors/antonym.json", "function_vectors/country-capital.json",
         "pairs", "pairs", extra_sources=("function_vectors/english-spanish.json",)),
)

#: per-family sizes of the default suite (the rest of EvalConfig keeps SUITE_DEFAULTS)
FAMILY_SIZES = {
    "sentiment": {"n_test": 150, "n_dev": 48},
    "mc": {"n_test": 100, "n_dev": 40},
    "pairs": {"n_test": 100, "n_dev": 40},
}
SUITE_DEFAULTS = dict(seeds=2, pool_size=48, num_selected=16, num_demos=4, icl_shots=(1, 2, 4),
                      ablation_settings="cast", calibration="none", latency_items=16, latency_batch=16,
                      latency_rounds=3)


class SuiteError(CastVllmError, ValueError):
    """The suite cannot run as asked (unknown pair, missing data)."""


def default_data_dir() -> Path:
    """``$CAST_VLLM_DATA``, else ``../shared/data`` beside the repository, else beside the cwd."""
    env = envs.data_dir()
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if here.is_dir():
        return here
    return Path.cwd().parent / "shared" / "data"


def suite_configs(model: str, data_dir: str | Path, pairs: Sequence[str] | None = None,
                  overrides: dict[str, Any] | None = None) -> list[tuple[Pair, EvalConfig]]:
    data = Path(data_dir)
    chosen = list(DEFAULT_PAIRS)
    if pairs:
        names = {p.name: p for p in DEFAULT_PAIRS}
        unknown = [n for n in pairs if n not in names]
        if unknown:
            raise SuiteError(f"unknown suite pair(s) {unknown}; known: {', '.join(names)}")
        chosen = [names[n] for n in pairs]
    out = []
    for pair in chosen:
        for rel in (pair.source, pair.target):
            if not (data / rel).is_file():
                raise SuiteError(f"{data / rel} not found: pass --data-dir (the shared data folder)")
        kwargs = {**SUITE_DEFAULTS, **FAMILY_SIZES[pair.family], **(overrides or {})}
        methods = parse_methods(kwargs.get("methods", METHODS))
        if "cast_multi_source" in methods and "extra_sources" not in kwargs:
            if pair.extra_sources:
                kwargs["extra_sources"] = tuple(str(data / rel) for rel in pair.extra_sources)
            else:
                logger.warning("%s: no extra sources for cast_multi_source; that method is left out of this pair",
                               pair.name)
                kwargs["methods"] = [m for m in methods if m != "cast_multi_source"]
        out.append((pair, EvalConfig(model=model, source=str(data / pair.source), target=str(data / pair.target),
                                     task=pair.task, name=pair.name, **kwargs)))
    return out


_KEY_IF_SET = ("extra_sources", "similarity_threshold")


def _config_key(cfg: EvalConfig, dtype: str = "float32") -> str:
    """What a finished pair must match to be reused; the engine dtype enters only when it is not
    the default, so results written before it was recorded stay reusable."""
    d = cfg.to_json_dict()
    d["source"], d["target"] = Path(cfg.source).name, Path(cfg.target).name
    d["extra_sources"] = [Path(p).name for p in cfg.extra_sources]
    for name in _KEY_IF_SET:   # fields added later enter only when set, as the dtype does
        if d[name] in ((), []) or d[name] == {f.name: f.default for f in fields(EvalConfig)}[name]:
            del d[name]
    if dtype != "float32":
        d["engine_dtype"] = dtype
    return json.dumps(d, sort_keys=True, default=str)


def output_stem(model: str) -> str:
    from cast_vllm.model_zoo import DEFAULT_MODEL

    return "transfer" if model == DEFAULT_MODEL else f"transfer_{Path(model).name}"


def run_suite(model: str, out_dir: str | Path, *, data_dir: str | Path | None = None,
              pairs: Sequence[str] | None = None, overrides: dict[str, Any] | None = None, resume: bool = True,
              progress: bool = True, engine_kwargs: dict | None = None) -> dict:
    """Evaluate every pair with one engine and one activation reader; write
    ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``out_dir`` after each pair."""
    from tqdm.auto import tqdm

    from cast_vllm.evaluation.backend import open_backend
    from cast_vllm.evaluation.report import write_report
    from cast_vllm.model_zoo import resolve

    data = Path(data_dir) if data_dir else default_data_dir()
    configs = suite_configs(model, data, pairs, overrides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = output_stem(model)
    json_path = out_dir / f"{stem}.json"
    previous: dict[str, dict] = {}
    if resume and json_path.is_file():
        try:
            for r in json.loads(json_path.read_text()).get("pairs", []):
                previous[r.get("name", "")] = r
        except (json.JSONDecodeError, AttributeError):
            logger.warning("%s is not a suite result; starting afresh", json_path)
    model_path = resolve(model)
    backend = None
    results: list[dict] = []
    t0 = time.perf_counter()
    dtype = str((engine_kwargs or {}).get("dtype", "float32"))
    suite = {"format": "cast-vllm-suite/1", "suite": "default", "model": model, "model_path": str(model_path),
             "data_dir": str(data), "engine_dtype": dtype, "pairs": results}
    bar = tqdm(configs, desc="suite", unit="pair", disable=not progress, dynamic_ncols=True)
    try:
        for pair, cfg in bar:
            bar.set_postfix_str(pair.name)
            old = previous.get(pair.name)
            if old is not None and old.get("suite_config_key") == _config_key(cfg, dtype):
                logger.info("%s: reusing the finished result in %s", pair.name, json_path)
                results.append(old)
                continue
            if backend is None:     # one engine and activation cache for every pair
                backend = open_backend(str(model_path), engine_kwargs=engine_kwargs, progress=progress)
            res = evaluate(cfg, engine=backend.engine, acts=backend.acts, progress=progress)
            res["family"], res["in_domain"] = pair.family, pair.in_domain
            res["suite_config_key"] = _config_key(cfg, dtype)
            results.append(res)
            suite["seconds"] = time.perf_counter() - t0
            suite["pairs"] = _with_other_pairs(results, previous)
            _write(json_path, suite)
            write_report(suite, out_dir / f"{stem}.md", out_dir / f"{stem}.png")
            logger.info("%s done in %.0f s", pair.name, res["timing"]["seconds_total"])
    finally:
        bar.close()
        if backend is not None:
            backend.close()
    suite["seconds"] = time.perf_counter() - t0
    suite["seconds_new"] = sum(r["timing"]["seconds_total"] for r in results if r.get("name") not in previous)
    suite["pairs"] = _with_other_pairs(results, previous)
    _write(json_path, suite)
    write_report(suite, out_dir / f"{stem}.md", out_dir / f"{stem}.png")
    return suite


def _write(path: Path, data: dict) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=1).encode())



def _with_other_pairs(results: list[dict], previous: dict[str, dict]) -> list[dict]:
    """This run's pairs and the finished pairs it did not ask for, in suite order: a run of
    some pairs never drops the others' results."""
    done = {r.get("name") for r in results}
    order = {p.name: i for i, p in enumerate(DEFAULT_PAIRS)}
    return sorted(results + [r for name, r in previous.items() if name not in done],
                  key=lambda r: order.get(r.get("name", ""), len(order)))
