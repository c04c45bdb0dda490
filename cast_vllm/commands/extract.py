"""`cast-vllm extract`: build a CAST steering vector from a source task.

Finished activation shards are kept in ``<out>.ckpt/`` (or ``--checkpoint-dir``) until the
vector is written, so an interrupted run picks up where it stopped when started again with the
same arguments. On success only this run's shard files are removed, never other files there.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from cast_vllm.commands.options import add_field, field_default, given_fields, shown
from cast_vllm.method.activations import BACKENDS
from cast_vllm.method.options import AGGREGATES, ExtractOptions
from cast_vllm.method.selection import SELECTION_RULES
from cast_vllm.model_zoo import DEFAULT_MODEL

logger = logging.getLogger(__name__)

#: ExtractOptions fields whose options are generated (same name, unit and default as the field)
_FIELDS = ("layers", "num_selected", "num_demos", "selection", "workers", "seed", "pool_size", "selection_layer",
           "neighbors", "diffusion_steps", "diffusion_runs", "aggregate", "balance_labels", "chat", "target",
           "target_task", "target_size", "similarity_threshold", "backend", "shard_size", "checkpoint_dir", "dtype",
           "batch_size", "max_model_len")


def add_arguments(p) -> None:
    # model, sources and tasks have no field default (the CLI's model does; sources and tasks are required)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"model folder, hub id or embedded model name (default {DEFAULT_MODEL})")
    p.add_argument("--source", nargs="+", required=True, metavar="S",
                   help="source task data file(s) (JSONL or JSON list); several are combined")
    p.add_argument("--task", nargs="+", required=True, metavar="T",
                   help="task format (sentiment, mc, pairs) or a YAML/JSON task file; one for all sources or one each")
    p.add_argument("--out", required=True, help="output vector file (.safetensors, or .gguf for a control vector)")
    p.add_argument("--gguf", default=None, metavar="PATH", help="also export a GGUF control vector here")
    add_field(p, ExtractOptions, "layers", "'all' (default), '5-10', '3,5,7'; negative counts from the end")
    add_field(p, ExtractOptions, "num_selected", "source samples that build the vector")
    add_field(p, ExtractOptions, "num_demos", "demonstrations per few-shot prompt")
    add_field(p, ExtractOptions, "selection", "sample selection rule", choices=SELECTION_RULES,
              note=": influence diffusion over a kNN graph")
    add_field(p, ExtractOptions, "workers", "Ray workers; > 1 starts Ray actors", note=": in-process")
    add_field(p, ExtractOptions, "seed", "seed of subsampling, selection and demonstrations")
    p.add_argument("--report", default=None, metavar="DIR", help="write analysis plots (PNG) and report.json here")
    p.add_argument("--compare", action="append", default=[], metavar="FILE[:TASK]",
                   help="extra task whose differences enter the report only (repeatable); TASK defaults to --task")
    g = p.add_argument_group("method")
    add_field(g, ExtractOptions, "pool_size", "candidates drawn (seeded) from each source before selection; 0 = all")
    add_field(g, ExtractOptions, "selection_layer", "layer whose state embeds samples (default middle)", type=int)
    add_field(g, ExtractOptions, "neighbors", "ideal: kNN graph neighbours")
    add_field(g, ExtractOptions, "diffusion_steps", "ideal: cascade steps")
    add_field(g, ExtractOptions, "diffusion_runs", "ideal: Monte Carlo cascades")
    add_field(g, ExtractOptions, "aggregate", "mean difference or its principal direction", choices=AGGREGATES)
    add_field(g, ExtractOptions, "balance_labels",
              "label-balanced demonstrations, and every gold label weighted equally in the mean")
    add_field(g, ExtractOptions, "chat", "render prompts with the tokenizer's chat template")
    add_field(g, ExtractOptions, "target", "target task file: weights several sources by similarity to it; "
              "--selection ideal_target measures influence on its queries")
    add_field(g, ExtractOptions, "target_task", "task of --target (default: the first --task)")
    add_field(g, ExtractOptions, "target_size", "target items used for its mean activation")
    add_field(g, ExtractOptions, "similarity_threshold", "drop sources whose similarity to the target is below this")
    e = p.add_argument_group("execution")
    add_field(e, ExtractOptions, "backend", "vllm pooling probe or HF transformers hooks", choices=BACKENDS)
    add_field(e, ExtractOptions, "shard_size", "prompts per shard (unit of work and checkpoint)")
    add_field(e, ExtractOptions, "checkpoint_dir", "finished shards (default <out>.ckpt)")
    e.add_argument("--keep-checkpoints", action="store_true", help="keep the checkpoint folder after success")
    add_field(e, ExtractOptions, "dtype", "model dtype; auto: the checkpoint's")
    add_field(e, ExtractOptions, "batch_size", "HF backend: prompts per forward pass")
    add_field(e, ExtractOptions, "max_model_len", "vLLM: longest prompt (default min(model, 4096))", type=int)
    # the field counts bytes; the CLI takes GiB
    kv_gib = field_default(ExtractOptions, "kv_cache_bytes") / (1 << 30)
    e.add_argument("--kv-cache-gib", type=float, default=kv_gib,
                   help=f"vLLM: KV cache size in GiB (default {shown(kv_gib)})")
    # the inverse of the field enforce_eager (default True): a flag turns the default off
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
    from cast_vllm.method.pipeline import extract
    from cast_vllm.ray_pool import WorkerLostError
    from cast_vllm.vectors import VectorFileError

    out = Path(args.out)
    if out.suffix not in {".safetensors", ".gguf"}:
        print(f"cast-vllm extract: --out must end in .safetensors or .gguf, got {out.name}", file=sys.stderr)
        return 2
    ckpt = Path(args.checkpoint_dir) if args.checkpoint_dir else out.with_name(out.name + ".ckpt")
    options = ExtractOptions(
        model=args.model, sources=args.source, tasks=args.task, compare=_compare_specs(args.compare, args.task[0]),
        **{**given_fields(args, ExtractOptions, _FIELDS), "checkpoint_dir": str(ckpt)},
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
