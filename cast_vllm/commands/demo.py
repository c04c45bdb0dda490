"""`cast-vllm demo`: the default model through the steering engine, end to end."""

import logging
import time

logger = logging.getLogger("cast_vllm.demo")

PROMPTS = [
    "The capital of France is",
    "Write one sentence about the sea.",
    "The best way to learn a language is",
    "A good movie review says",
    "Three colours of the rainbow are",
    "The opposite of hot is",
    "My favourite season is",
    "Python is a programming language that",
]


def add_arguments(p):
    p.add_argument("--model", default="smollm2-135m", help="model folder or embedded model name")
    p.add_argument("--max-tokens", type=int, default=32)


def run(args) -> int:
    import os

    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    from vllm import SamplingParams

    from cast_vllm import SteeredLLM
    from cast_vllm.model_zoo import MODELS, prepare_model

    model = str(prepare_model(args.model)) if args.model in MODELS else args.model
    llm = SteeredLLM(model, dtype="float32", max_model_len=1024)
    sp = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    t0 = time.perf_counter()
    outs = llm.generate(PROMPTS, sp, use_tqdm=True)
    dt = time.perf_counter() - t0
    ntok = sum(len(o.outputs[0].token_ids) for o in outs)
    for o in outs:
        print(f"{o.prompt!r} -> {o.outputs[0].text.strip()[:80]!r}")
    print(f"\n{len(PROMPTS)} prompts, {ntok} generated tokens in {dt:.1f} s: {ntok / dt:.0f} tokens/s")
    return 0
