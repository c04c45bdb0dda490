"""`cast-vllm generate`: steered generation from the command line."""

import json
import sys


def add_arguments(p):
    p.add_argument("--model", required=True, help="model folder, hub id or embedded model name (smollm2-135m)")
    p.add_argument("--vector-dir", default=None, help="directory of vector files (name = file stem)")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    p.add_argument("--steering", default=None,
                   help='steering spec as JSON or a vector name, e.g. \'{"vector": "v", "scale": 4}\'')
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--chat", action="store_true", help="apply the model's chat template")
    p.add_argument("--compare", action="store_true", help="also print the unsteered output")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="context length (default: the model's, at most 2048, to keep the KV cache small)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")


def run(args) -> int:
    from cast_vllm import SteeredLLM
    from cast_vllm.engine.shutdown import shutdown_llm
    from cast_vllm.model_zoo import max_context, resolve

    model = resolve(args.model)
    llm = SteeredLLM(model, vector_dir=args.vector_dir, dtype=args.dtype, enforce_eager=args.enforce_eager,
                     max_model_len=args.max_model_len or max_context(model),
                     use_tqdm_on_load=getattr(args, "verbose", False))
    try:
        results = _generate(llm, args)
    except ValueError as exc:
        print(f"cast-vllm generate: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown_llm(llm)   # now, not at exit: vLLM force-kills (and warns about) a live engine core
    for i, prompt in enumerate(args.prompt):
        if args.json:
            print(json.dumps({"prompt": prompt, **{k: v[i] for k, v in results.items()}}))
        else:
            for label, texts in results.items():
                print(f"[{label if args.steering else 'output'}] {prompt!r} -> {texts[i]!r}")
    return 0


def _generate(llm, args) -> dict[str, list[str]]:
    from vllm import SamplingParams

    variants = [("steered", args.steering)] + ([("unsteered", None)] if args.compare and args.steering else [])
    results = {}
    for label, steering in variants:
        sp = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                            extra_args=None if steering is None else {"steering": steering})
        if args.chat:
            outs = llm.chat([[{"role": "user", "content": p}] for p in args.prompt], sp, use_tqdm=False)
        else:
            outs = llm.generate(args.prompt, sp, use_tqdm=False)
        results[label] = [o.outputs[0].text for o in outs]
    return results
