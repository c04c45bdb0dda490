"""`cast-vllm batch`: offline batch inference from a JSONL file, in input order, resumable,
over N Ray workers (``cast_vllm/batch/``)."""

from __future__ import annotations

import sys

from cast_vllm.batch.runner import BatchOptions
from cast_vllm.commands.options import add_field
from cast_vllm.model_zoo import DEFAULT_MODEL


def add_arguments(p) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"model folder, hub id or embedded model name (default {DEFAULT_MODEL}); with Ray workers on "
                        "other nodes it must exist there too")
    p.add_argument("--input", required=True,
                   help='JSONL, one request per line: {"id", "prompt" | "messages", "sampling", "steering"}')
    p.add_argument("--output", required=True, help="JSONL results, one line per request in input order")
    add_field(p, BatchOptions, "vector_dir", "vector files (name = file stem) the requests' steering names; the "
              "workers receive their bytes, so they need no access to it")
    add_field(p, BatchOptions, "workers", "engines; > 1 starts Ray actors (a local cluster or RAY_ADDRESS), one GPU "
              "each where GPUs exist", note=": in-process")
    add_field(p, BatchOptions, "shard_size", "requests per engine run (the unit of work; N workers write exactly "
              "what one writes)")
    p.add_argument("--no-resume", action="store_true", help="overwrite --output instead of continuing it")
    g = p.add_argument_group("sampling defaults (a line's own 'sampling' wins)")
    add_field(g, BatchOptions, "max_tokens", "tokens to generate")
    add_field(g, BatchOptions, "temperature", "0 = greedy")
    e = p.add_argument_group("engine")
    e.add_argument("--dtype", default="auto", help="model dtype (default auto: the checkpoint's)")
    e.add_argument("--max-model-len", type=int, default=None,
                   help="context length (default: the model's, at most 2048)")
    e.add_argument("--max-num-seqs", type=int, default=None, help="requests in flight per engine (vLLM's default)")
    e.add_argument("--max-steering-vectors", type=int, default=None,
                   help="steering slots per engine (default: one per sequence, at most 256)")
    e.add_argument("--compile", action="store_true", help="allow torch.compile / CUDA graphs (slower start)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from cast_vllm.batch.runner import run_batch

    engine = {"dtype": args.dtype, "enforce_eager": not args.compile}
    if args.max_model_len:
        engine["max_model_len"] = args.max_model_len
    if args.max_num_seqs:
        engine["max_num_seqs"] = args.max_num_seqs
    if args.max_steering_vectors:
        engine["max_steering_vectors"] = args.max_steering_vectors
    summary = run_batch(BatchOptions(model=args.model, input=args.input, output=args.output, vector_dir=args.vector_dir,
                                     workers=args.workers, shard_size=args.shard_size, resume=not args.no_resume,
                                     max_tokens=args.max_tokens, temperature=args.temperature, engine_kwargs=engine,
                                     progress=not args.no_progress))
    print(f"{args.output}: {summary.written} requests written, {summary.resumed} kept from an earlier run, "
          f"{summary.errors} refused ({summary.workers} worker{'s' if summary.workers > 1 else ''})")
    if summary.errors:
        print(f"cast-vllm batch: {summary.errors} request(s) were refused; their lines in {args.output} say why "
              "(\"error\")", file=sys.stderr)
        return 1
    return 0
