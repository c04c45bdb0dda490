"""`cast-vllm extract`: build a CAST steering vector from a source task.

Finished activation shards are kept in ``<out>.ckpt/`` (or ``--checkpoint-dir``) until the
vector is written, so an interrupted run picks up where it stopped when started again with the
same arguments. On success only this run's shard files are removed, never other files there.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from cast_vllm.model_zoo import DEFAULT_MODEL

logger = logging.getLogger(__name__)


def add_arguments(p) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"model folder, hub id or embedded model name (default {DEFAULT_MODEL})")
    p.add_argument("--source", nargs="+", required=True, metavar="S",
                   help="source task data file(s) (JSONL or JSON list); several are combined")
    p.add_argument("--task", nargs="+", required=True, metavar="T",
                   help="task format (sentiment, mc, pairs) or a YAML/JSON task file; one for all sources or one each")
    p.add_argument("--out", required=True, help="output vector file (.safetensors, or .gguf for a control vector)")
    p.add_argument("--gguf", default=None, metavar="PATH", help="also export a GGUF control vector here")
    p.add_argument("--layers", default="all", help="'all' (default), '5-10', '3,5,7'; negative counts from the end")
    p.add_argument("--num-selected", type=int, default=64, help="source samples that build the vector (default 64)")
    p.add_argument("--num-demos", type=int, default=4, help="demonstrations per few-shot prompt (default 4)")
    p.add_argument("--selection", choices=("ideal", "random", "kmeans"), default="ideal",
                   help="sample selection rule (default ideal: influence diffusion over a kNN graph)")
    p.add_argument("--workers", type=int, default=1, help="Ray workers; > 1 starts Ray actors (default 1: in-process)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", default=None, metavar="DIR", help="write analysis plots (PNG) and report.json here")
    p.add_argument("--compare", action="append", default=[], metavar="FILE[:TASK]",
                   help="extra task whose differences enter the report only (repeatable); TASK defaults to --task")
    g = p.add_argument_group("method")
    g.add_argument("--pool-size", type=int, default=1000,
                   help="candidates drawn (seeded) from each source before selection; 0 = all (default 1000)")
    g.add_argument("--selection-layer", type=int, default=None, help="layer whose state embeds samples (default middle)")
    g.add_argument("--neighbors", type=int, default=10, help="ideal: kNN graph neighbours (default 10)")
    g.add_argument("--diffusion-steps", type=int, default=10, help="ideal: cascade steps (default 10)")
    g.add_argument("--diffusion-runs", type=int, default=10, help="ideal: Monte Carlo cascades (default 10)")
    g.add_argument("--aggregate", choices=("mean", "pca"), default="mean",
                   help="mean difference (default) or its principal direction")
    g.add_argument("--chat", action="store_true", help="render prompts with the tokenizer's chat template")
    g.add_argument("--target", default=None, help="target task file: weights several sources by similarity to it")
    g.add_argument("--target-task", default=None, help="task of --target (default: the first --task)")
    g.add_argument("--target-size", type=int, default=200, help="target items used for its mean activation")
    g.add_argument("--similarity-threshold", type=float, default=0.0,
                   help="drop sources whose similarity to the target is below this")
    e = p.add_argument_group("execution")
    e.add_argument("--backend", choices=("vllm", "hf"), default="vllm",
                   help="vllm pooling probe (default) or HF transformers hooks")
    e.add_argument("--shard-size", type=int, default=64, help="prompts per shard (unit of work and checkpoint)")
    e.add_argument("--checkpoint-dir", default=None, help="finished shards (default <out>.ckpt)")
    e.add_argument("--keep-checkpoints", action="store_true", help="keep the checkpoint folder after success")
    e.add_argument("--dtype", default="auto", help="model dtype (default: the checkpoint's)")
    e.add_argument("--batch-size", type=int, default=8, help="HF backend: prompts per forward pass")
    e.add_argument("--max-model-len", type=int, default=None, help="vLLM: longest prompt (default min(model, 4096))")
    e.add_argument("--kv-cache-gib", type=float, default=0.5, help="vLLM: KV cache size in GiB (default 0.5)")
    e.add_argument("--compile", action="store_true", help="vLLM: allow torch.compile / CUDA graphs (slower start)")


def _compare_specs(items: list[str], default_task: str) -> list[tuple[str, str]]:
    """``FILE[:TASK]`` -> (file, task); a path that exists as given is never split."""
    out = []
    for item in items:
        if ":" in item and not Path(item).exists():
            path, task = item.rsplit(":", 1)
        else:
            path, task = item, default_task
        out.append((path, task))
    return out


def run(args) -> int:
    from cast_vllm.method.build import ExtractOptions, extract
    from cast_vllm.method.distributed import WorkerLostError
    from cast_vllm.vectors import VectorFileError

    out = Path(args.out)
    if out.suffix not in {".safetensors", ".gguf"}:
        print(f"cast-vllm extract: --out must end in .safetensors or .gguf, got {out.name}", file=sys.stderr)
        return 2
    ckpt = Path(args.checkpoint_dir) if args.checkpoint_dir else out.with_name(out.name + ".ckpt")
    options = ExtractOptions(
        model=args.model, sources=args.source, tasks=args.task, layers=args.layers,
        num_selected=args.num_selected, num_demos=args.num_demos, selection=args.selection, seed=args.seed,
        pool_size=args.pool_size, selection_layer=args.selection_layer, neighbors=args.neighbors,
        diffusion_steps=args.diffusion_steps, diffusion_runs=args.diffusion_runs, aggregate=args.aggregate,
        chat=args.chat, target=args.target, target_task=args.target_task, target_size=args.target_size,
        similarity_threshold=args.similarity_threshold, compare=_compare_specs(args.compare, args.task[0]),
        backend=args.backend, workers=args.workers, shard_size=args.shard_size, checkpoint_dir=str(ckpt),
        dtype=args.dtype, batch_size=args.batch_size, max_model_len=args.max_model_len,
        kv_cache_bytes=int(args.kv_cache_gib * (1 << 30)), enforce_eager=not args.compile,
    )
    try:
        result = extract(options)
        result.vector.save(out)
        if args.gguf:
            result.vector.save_gguf(args.gguf)
        if args.report:
            from cast_vllm.method.report import write_report

            write_report(result, args.report)
    except (ValueError, VectorFileError) as exc:   # our errors are ValueError subclasses
        print(f"cast-vllm extract: {exc}", file=sys.stderr)
        if ckpt.is_dir():
            print(f"cast-vllm extract: finished shards kept in {ckpt}", file=sys.stderr)
        return 2
    except OSError as exc:   # a hub id that cannot be fetched, an unreadable file
        print(f"cast-vllm extract: {exc} (--model {args.model!r})", file=sys.stderr)
        return 1
    except WorkerLostError as exc:
        print(f"cast-vllm extract: {exc}", file=sys.stderr)
        if ckpt.is_dir():
            print(f"cast-vllm extract: finished shards kept in {ckpt}; run again to resume", file=sys.stderr)
        return 1
    if result.checkpoint is not None and not args.keep_checkpoints:
        result.checkpoint.remove_own()
    stats = result.stats
    logger.info("shards: %d computed, %d resumed from checkpoint, %d workers replaced",
                stats.get("shards_computed", 0), stats.get("shards_resumed", 0), stats.get("workers_replaced", 0))
    print(out)
    return 0
