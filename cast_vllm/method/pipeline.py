"""CAST steering vectors from source tasks: the whole offline pipeline behind ``extract``.

For each source task (notes/cast-method.md, steps 1-3 and 5):

1. load the source pool (a seeded subsample of ``pool_size`` items when the file is larger);
2. read zero-shot activations of the pool (all chosen layers plus the selection layer);
3. select ``num_selected`` influential and diverse samples (``selection.py``) using the
   zero-shot state at the selection layer (default: the middle layer) as the embedding;
4. give each selected sample ``num_demos`` demonstrations drawn (seeded) from the *other*
   selected samples and read its few-shot activations (steps 2-4: ``source_shift.py``);
5. per layer, ``v_l = mean_i [h_l(demos_i ; x_i) - h_l(x_i)]`` (``aggregate="mean"``), or the
   first principal direction of the differences (``aggregate="pca"``, ``cast_math.py``).

Several sources are combined with per-layer weights: the cosine between each source's mean
zero-shot activation and the target's (when a target file is given; sources below
``similarity_threshold`` are dropped and the rest renormalised), or equal weights otherwise.

The activation passes share one ``ActivationPool`` (one model load, one progress bar, Ray
workers and shard checkpoints when asked).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cast_vllm.method.activations import ReaderConfig, encode_prompts, load_tokenizer, model_info, parse_layers
from cast_vllm.method.cast_math import aggregate_differences, similarity_weights, unique_names
from cast_vllm.method.checkpoints import ShardCheckpoint
from cast_vllm.method.options import ExtractionError, ExtractOptions
from cast_vllm.method.pool import ActivationPool
from cast_vllm.method.selection import SelectionError
from cast_vllm.method.source_shift import ShiftSettings, source_shift
from cast_vllm.method.tasks import TaskItem, TaskSpec, build_prompts, load_task, load_task_spec
from cast_vllm.model_zoo import resolve
from cast_vllm.vectors import SteeringVector

logger = logging.getLogger(__name__)


@dataclass
class SourceResult:
    """What one source contributed (kept for reports and analysis)."""

    path: str
    task: TaskSpec
    pool_size: int
    selected_ids: list[str]
    demo_ids: list[list[str]]
    diffs: np.ndarray            # [selected, layers, hidden] few-shot minus zero-shot
    zero_mean: np.ndarray        # [layers, hidden] mean zero-shot activation over what was read
    directions: dict[int, np.ndarray]

    @property
    def name(self) -> str:
        return Path(self.path).stem


@dataclass
class ExtractionResult:
    vector: SteeringVector
    layers: list[int]
    sources: list[SourceResult]
    weights: dict[str, list[float]] = field(default_factory=dict)   # source name -> per-layer weight
    stats: dict[str, Any] = field(default_factory=dict)
    compared: list[SourceResult] = field(default_factory=list)      # not in the vector
    checkpoint: ShardCheckpoint | None = None                         # the pool's, for clean-up


def _subsample(items: list[TaskItem], size: int, seed: int) -> list[TaskItem]:
    if size == 0 or len(items) <= size:
        return list(items)
    idx = np.sort(np.random.default_rng([seed, 0]).choice(len(items), size=size, replace=False))
    return [items[i] for i in idx]


def extract(options: ExtractOptions, progress=None, pool: ActivationPool | None = None) -> ExtractionResult:
    """Run the pipeline (module doc) and return the vector with everything that made it.

    ``pool``: an open ``ActivationPool`` to reuse (several extractions on one engine or one set
    of Ray workers); its reader must cover the chosen layers plus the selection layer. It is
    left open. Without it, one is made from the options and closed at the end."""
    from tqdm.auto import tqdm

    opt = options
    opt.validate()
    model_path = resolve(opt.model)
    info = model_info(model_path)
    layers = parse_layers(opt.layers, info.num_layers)
    sel_layer = opt.selection_layer if opt.selection_layer is not None else info.num_layers // 2
    sel_layer = parse_layers([sel_layer], info.num_layers)[0]
    read_layers = sorted(set(layers) | {sel_layer})
    pos = {layer: k for k, layer in enumerate(read_layers)}
    keep = [pos[layer] for layer in layers]
    tokenizer = load_tokenizer(model_path)

    tasks = list(opt.tasks) * (len(opt.sources) if len(opt.tasks) == 1 else 1)
    specs = [load_task_spec(t) for t in tasks]
    compare_specs = [load_task_spec(t) for _, t in opt.compare]
    pools = []
    for path, spec in zip([*opt.sources, *(p for p, _ in opt.compare)], [*specs, *compare_specs]):
        items = load_task(path, spec)
        cands = _subsample(items, opt.pool_size, opt.seed)
        if len(cands) < opt.num_selected:
            raise ExtractionError(f"{path}: only {len(cands)} usable items, fewer than --num-selected "
                                  f"{opt.num_selected}")
        pools.append(cands)
    target_items = None
    if opt.target:
        tspec = load_task_spec(opt.target_task or tasks[0])
        target_items = _subsample(load_task(opt.target, tspec), opt.target_size, opt.seed)

    n_zero = [opt.num_selected if opt.selection == "random" else len(p) for p in pools]
    total = sum(n_zero) + opt.num_selected * len(pools) + (len(target_items) if target_items else 0)
    compare_pools, pools = pools[len(specs):], pools[: len(specs)]
    config = ReaderConfig(str(model_path), tuple(read_layers), backend=opt.backend, dtype=opt.dtype,
                          batch_size=opt.batch_size, max_model_len=opt.max_model_len,
                          kv_cache_bytes=opt.kv_cache_bytes, enforce_eager=opt.enforce_eager)
    own_bar = progress is None
    bar = tqdm(total=total, desc="extract", unit="prompt", dynamic_ncols=True) if own_bar else progress
    results: list[SourceResult] = []
    compared: list[SourceResult] = []
    target_mean = None
    if pool is not None:
        if Path(pool.config.model).resolve() != Path(model_path).resolve() or pool.config.layers != config.layers:
            raise ExtractionError(f"the given pool reads {pool.config.model} at layers {list(pool.config.layers)}; "
                                  f"this extraction needs {model_path} at layers {read_layers}")
    pool_runner = pool if pool is not None else ActivationPool(
        config, opt.workers, shard_size=opt.shard_size, checkpoint_dir=opt.checkpoint_dir)

    def read(prompts: list[str], phase: str = "") -> np.ndarray:
        return pool_runner.read(encode_prompts(tokenizer, prompts, chat=opt.chat), progress=bar)

    try:
        target_embeddings = None
        if target_items:
            tspec = load_task_spec(opt.target_task or tasks[0])
            acts = read(build_prompts(target_items, None, tspec, chat=opt.chat, tokenizer=tokenizer))
            target_mean = acts[:, keep].astype(np.float64).mean(axis=0)
            target_embeddings = acts[:, pos[sel_layer]]
        for path, spec, cands in zip(opt.sources, specs, pools):
            results.append(_one_source(opt, path, spec, cands, read, tokenizer, pos[sel_layer], keep, layers,
                                       target_embeddings))
        for (path, _), spec, cands in zip(opt.compare, compare_specs, compare_pools):
            compared.append(_one_source(opt, path, spec, cands, read, tokenizer, pos[sel_layer], keep, layers,
                                        target_embeddings))
    finally:
        if pool is None:
            pool_runner.close()
        if own_bar:
            bar.close()

    names = source_names(results)
    weights = similarity_weights({n: r.zero_mean for n, r in zip(names, results)}, target_mean,
                                 opt.similarity_threshold)
    directions = {}
    for j, layer in enumerate(layers):
        directions[layer] = sum(weights[n][j] * results[k].directions[layer] for k, n in enumerate(names))
    meta = _metadata(opt, model_path, info, layers, sel_layer, results, weights if len(results) > 1 else {})
    meta["workers"] = str(pool_runner.workers)
    meta["backend"] = pool_runner.config.backend
    vector = SteeringVector({layer: torch.from_numpy(np.asarray(d, np.float32)) for layer, d in directions.items()},
                            meta)
    return ExtractionResult(vector, layers, results, {n: w.tolist() for n, w in weights.items()},
                            dict(pool_runner.stats), compared, pool_runner.checkpoint)


def source_names(results: Sequence[SourceResult]) -> list[str]:
    """File stems, made unique with ``#k`` when two sources share one."""
    return unique_names([r.name for r in results])


def _one_source(opt: ExtractOptions, path: str, spec: TaskSpec, pool: list[TaskItem], read, tokenizer,
                sel_pos: int, keep: list[int], layers: list[int],
                target_embeddings: np.ndarray | None) -> SourceResult:
    settings = ShiftSettings(opt.num_selected, opt.num_demos, opt.selection, sel_pos, opt.neighbors,
                             opt.diffusion_steps, opt.diffusion_runs, balance_labels=opt.balance_labels)
    try:
        shift = source_shift(pool, spec, read, settings, opt.seed, chat=opt.chat, tokenizer=tokenizer,
                             target_embeddings=target_embeddings)
    except SelectionError as exc:
        raise ExtractionError(f"{path}: {exc}") from None
    diffs = shift.diffs[:, keep].astype(np.float32)     # kept for the report; aggregated as stored
    agg = aggregate_differences(diffs, opt.aggregate, shift.weights)
    norms = np.linalg.norm(agg, axis=-1)
    logger.info("%s: %d samples, vector norm per layer %.3g..%.3g", path, len(shift.items), norms.min(), norms.max())
    return SourceResult(path=str(path), task=spec, pool_size=len(pool), selected_ids=shift.sample_ids,
                        demo_ids=shift.demo_ids, diffs=diffs,
                        zero_mean=shift.zero[:, keep].astype(np.float64).mean(axis=0),
                        directions={layer: agg[j] for j, layer in enumerate(layers)})


def _metadata(opt: ExtractOptions, model_path: str, info, layers, sel_layer, results: list[SourceResult],
              weights: dict[str, np.ndarray]) -> dict[str, str]:
    from cast_vllm import __version__

    one = len(results) == 1

    def per_source(fn):
        return fn(results[0]) if one else {r.path: fn(r) for r in results}

    meta = {
        "model": str(opt.model),
        "model_path": str(model_path),
        "model_type": info.model_type,
        "hidden_size": str(info.hidden_size),
        "num_layers": str(info.num_layers),
        "method": "cast",
        "source": results[0].path if one else json.dumps([r.path for r in results]),
        "task": json.dumps(per_source(lambda r: r.task.path or r.task.name)) if not one
        else (results[0].task.path or results[0].task.name),
        "task_format": json.dumps(per_source(lambda r: r.task.format)) if not one else results[0].task.format,
        "task_spec": json.dumps(per_source(lambda r: {k: v for k, v in asdict(r.task).items() if k != "path"})),
        "selection": opt.selection,
        "selection_layer": str(sel_layer),
        "selection_settings": json.dumps({"neighbors": opt.neighbors, "diffusion_steps": opt.diffusion_steps,
                                          "diffusion_runs": opt.diffusion_runs}
                                         if opt.selection.startswith("ideal") else {}),
        "balance_labels": str(opt.balance_labels).lower(),
        "pool_size": json.dumps(per_source(lambda r: r.pool_size)),
        "num_selected": str(opt.num_selected),
        "num_demos": str(opt.num_demos),
        "selected_ids": json.dumps(per_source(lambda r: r.selected_ids)),
        "demo_ids": json.dumps(per_source(lambda r: r.demo_ids)),
        "seed": str(opt.seed),
        "layers": json.dumps(layers),
        "aggregate": opt.aggregate,
        "position": "last_prompt_token",
        "chat_template": str(bool(opt.chat)).lower(),
        "backend": opt.backend,
        "workers": str(opt.workers),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cast_vllm_version": __version__,
    }
    if weights:
        meta["source_weights"] = json.dumps({n: [round(float(x), 6) for x in w] for n, w in weights.items()})
        if opt.target:
            meta["target"] = str(opt.target)
            meta["similarity_threshold"] = str(opt.similarity_threshold)
    return meta


def extract_vector(model: str, source: str | Sequence[str], task: str | Sequence[str] = "sentiment", *,
                   out: str | Path | None = None, **options: Any) -> SteeringVector:
    """One call from Python: ``extract_vector("smollm2-135m", "movies.jsonl", "sentiment",
    out="movies.safetensors", layers="5-10", num_selected=64)``. Options as ``ExtractOptions``."""
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    tasks = [task] if isinstance(task, (str, Path, TaskSpec)) else list(task)
    result = extract(ExtractOptions(model=str(model), sources=[str(s) for s in sources], tasks=tasks, **options))
    if out is not None:
        result.vector.save(out)
    return result.vector
