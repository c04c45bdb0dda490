"""`cast-vllm eval`: cross-task transfer of CAST against zero-shot, cross-task ICL and controls.

One pair::

    cast-vllm eval --model smollm2-135m --source movies.jsonl --target tweets.jsonl --task sentiment \\
        --methods zero_shot,icl,cast,cast_random_selection,mean_diff,random_vector,target_icl \\
        --output results.json --seeds 3 --n-test 400 --n-dev 100

The default suite (writes bench/results/transfer.{json,md,png}; other models transfer_<model>.*)::

    cast-vllm eval --suite default [--model gemma3-270m]
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Iterator

from cast_vllm import envs
from cast_vllm.commands.options import add_field, comma_list, given_fields
from cast_vllm.model_zoo import DEFAULT_MODEL

#: EvalConfig fields that name the pair (its own options, or the suite's pairs); every other
#: field given on the command line is a setting shared by the pair or every suite pair
PAIR_FIELDS = ("model", "source", "target", "task", "source_task", "methods", "name")


def add_arguments(p) -> None:
    from cast_vllm.evaluation.config import ABLATION_SETTINGS, EvalConfig
    from cast_vllm.evaluation.methods import METHODS, VARIANT_METHODS
    from cast_vllm.evaluation.scoring import CALIBRATIONS, SCORINGS

    def setting(group, name: str, help: str, **kwargs):
        """An option for an EvalConfig field; None when not given (the suite's defaults apply)."""
        return add_field(group, EvalConfig, name, help, unset=True, **kwargs)

    p.add_argument("--suite", choices=("default",), default=None,
                   help="run the default transfer suite (ignores --source/--target/--task)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model folder, hub id or embedded model name (default {DEFAULT_MODEL})")
    p.add_argument("--source", help="source task data file (JSONL or JSON list)")
    p.add_argument("--target", help="target task data file")
    p.add_argument("--task", help="target task format (sentiment, mc, pairs) or a YAML/JSON task file")
    add_field(p, EvalConfig, "source_task", "source task format or file (default: --task)")
    p.add_argument("--methods", default=None,
                   help=f"comma list from {','.join(METHODS)} (the default) and the CAST variants "
                        f"{','.join(VARIANT_METHODS)}")
    p.add_argument("--output", default=None, help="result JSON (one pair; default: print a summary only)")
    setting(p, "seeds", "seeds of the source sample", note="; suite 2")
    setting(p, "n_test", "target test items", note="; suite per family")
    setting(p, "n_dev", "target dev items for selection")
    add_field(p, EvalConfig, "split_seed", "seed of the dev/test split")
    g = p.add_argument_group("method")
    setting(g, "pool_size", "source pool size", note="; suite 48")
    setting(g, "extra_sources", "cast_multi_source: more source files, comma list", note="; suite per pair")
    setting(g, "similarity_threshold", "cast_multi_source: drop sources whose cosine to the target is lower")
    setting(g, "num_selected", "samples building a CAST vector")
    setting(g, "num_demos", "demos per few-shot prompt when extracting")
    setting(g, "icl_shots", "candidate k for icl/target_icl")
    setting(g, "alphas", "alpha candidates, first = base")
    setting(g, "modes", "steering modes to try")
    setting(g, "positions", "position policies to try")
    setting(g, "layer_fractions", "window starts as fractions of depth")
    setting(g, "layer_width", "window width (default depth/10)", type=int)
    g.add_argument("--no-vary-width", dest="vary_width", action="store_false", default=None,
                   help="skip the search's window-width stage")
    add_field(g, EvalConfig, "tune_each_seed", "search every seed's vector (default: seed 0's)")
    setting(g, "ablation_settings", "cast_random_selection/mean_diff: own dev search or CAST's setting",
            choices=ABLATION_SETTINGS, note="; suite cast")
    setting(g, "calibration", "label scoring: none, or dev-set batch calibration for every method",
            choices=CALIBRATIONS)
    setting(g, "scoring", "auto: label words for closed label sets, generation otherwise", choices=SCORINGS)
    setting(g, "max_new_tokens", "generation scoring: tokens")
    setting(g, "latency_items", "test items timed per method", note="; suite 16")
    setting(g, "latency_batch", "batch size of the latency phase")
    setting(g, "latency_rounds", "timed passes over the latency items")
    e = p.add_argument_group("suite and engine")
    e.add_argument("--pairs", type=comma_list(str), default=None, help="suite: only these pairs (names as in the report)")
    e.add_argument("--data-dir", default=None, help="suite: the shared data folder (default ../shared/data)")
    e.add_argument("--out-dir", default="bench/results", help="suite: where transfer*.{json,md,png} go")
    e.add_argument("--no-resume", action="store_true", help="suite: recompute pairs already in the JSON")
    e.add_argument("--report-only", action="store_true",
                   help="suite: rewrite the markdown and PNG from the existing JSON, run nothing")
    e.add_argument("--dtype", default="float32", help="engine dtype (default float32, like the activation reader)")
    e.add_argument("--max-model-len", type=int, default=2048, help="engine context (default 2048)")
    e.add_argument("--kv-cache-gib", type=float, default=0.5, help="engine KV cache in GiB (default 0.5)")
    e.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch/OpenMP (default 1: faster than 2 on a shared 2-core machine; "
                        "0 leaves the environment alone)")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")


def _settings(args) -> dict:
    """The EvalConfig settings given on the command line (not the pair's identity)."""
    from cast_vllm.evaluation.config import EvalConfig

    return given_fields(args, EvalConfig, [f.name for f in fields(EvalConfig) if f.name not in PAIR_FIELDS])


def _summary(result: dict) -> str:
    lines = [f"{result['name']}: {result['n_test']} test items, {result['n_dev']} dev, scoring {result['scoring']}",
             f"{'method':24s} {'accuracy':>14s} {'vs zero-shot':>13s} {'p':>7s} {'ms/query':>9s}  chosen"]
    for m, e in result["methods"].items():
        sig = result["significance"].get(m)
        acc = f"{100 * e['accuracy']:.1f} ± {100 * e['accuracy_std']:.1f}"
        delta = f"{100 * sig['delta']:+.1f}" if sig else ""
        p = f"{sig['p_bootstrap']:.3f}" if sig else ""
        lat = f"{e['latency_ms_per_query']:.0f}" if e.get("latency_ms_per_query") is not None else "-"
        lines.append(f"{m:24s} {acc:>14s} {delta:>13s} {p:>7s} {lat:>9s}  {e.get('chosen') or ''}")
    return "\n".join(lines)


def run(args) -> int:
    envs.use_cpu_engine_defaults()
    # engine core in this process: one process less (memory is the scarce resource on a shared
    # 24 GiB machine), and the evaluation waits on every batch anyway
    envs.engine_in_process_default()
    with cpu_threads(args.threads):
        return _run(args)


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch/OpenMP threads (the engine reads OMP_NUM_THREADS when it starts;
    0 leaves both alone), then restore the previous setting. Over-subscribed 2-core machines run
    a 135M model faster on one thread: two threads spin-wait on each other while other jobs
    hold the cores."""
    import torch

    saved = torch.get_num_threads()
    with envs.temporarily(envs.OMP_NUM_THREADS, str(n) if n > 0 else None):
        if n > 0:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(saved)


def _run(args) -> int:
    from cast_vllm.evaluation.config import EvalConfig
    from cast_vllm.evaluation.methods import METHODS, parse_methods
    from cast_vllm.evaluation.protocol import evaluate
    from cast_vllm.evaluation.suite import run_suite

    engine_kwargs = {"dtype": args.dtype, "max_model_len": args.max_model_len, "kv_cache_gib": args.kv_cache_gib}
    progress = not args.no_progress
    try:
        if args.suite and args.report_only:
            from cast_vllm.evaluation.report import write_report
            from cast_vllm.evaluation.suite import output_stem

            stem = str(Path(args.out_dir) / output_stem(args.model))   # no with_suffix: "qwen2.5-..." has dots
            if not Path(f"{stem}.json").is_file():
                print(f"cast-vllm eval: {stem}.json does not exist; run the suite first", file=sys.stderr)
                return 2
            write_report(json.loads(Path(f"{stem}.json").read_text()), f"{stem}.md", f"{stem}.png")
            print(f"wrote {stem}.md and {stem}.png")
            return 0
        if args.suite:
            overrides = _settings(args) | ({"methods": parse_methods(args.methods)} if args.methods else {})
            suite = run_suite(args.model, args.out_dir, data_dir=args.data_dir, pairs=args.pairs,
                              overrides=overrides, resume=not args.no_resume, progress=progress,
                              engine_kwargs=engine_kwargs)
            for r in suite["pairs"]:
                print(_summary(r), end="\n\n")
            from cast_vllm.evaluation.report import goal_check, with_calibrated_zero_shot
            from cast_vllm.evaluation.suite import output_stem

            print(json.dumps(goal_check(with_calibrated_zero_shot(suite["pairs"])), indent=1))
            print(f"wrote {Path(args.out_dir) / output_stem(args.model)}.{{json,md,png}}")
            return 0
        missing = [o for o in ("source", "target", "task") if not getattr(args, o)]
        if missing:
            print(f"cast-vllm eval: --{', --'.join(missing)} required (or --suite default)", file=sys.stderr)
            return 2
        cfg = EvalConfig(model=args.model, source=args.source, target=args.target, task=args.task,
                         source_task=args.source_task, methods=args.methods or METHODS, **_settings(args))
        from cast_vllm.evaluation.backend import open_backend

        cfg.validate()
        backend = open_backend(args.model, engine_kwargs=engine_kwargs, progress=progress)
        try:
            result = evaluate(cfg, engine=backend.engine, acts=backend.acts, progress=progress)
        finally:
            backend.close()
    except ValueError as exc:   # every error of ours names its problem
        print(f"cast-vllm eval: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:   # a hub id that cannot be fetched, an unreadable file
        print(f"cast-vllm eval: {exc} (--model {args.model!r})", file=sys.stderr)
        return 1
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=1))
    print(_summary(result))
    if args.output:
        print(f"wrote {args.output}")
    return 0
