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
import logging
import sys
from pathlib import Path

from cast_vllm.model_zoo import DEFAULT_MODEL

logger = logging.getLogger(__name__)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _strs(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_arguments(p) -> None:
    from cast_vllm.evaluation.methods import METHODS

    p.add_argument("--suite", choices=("default",), default=None,
                   help="run the default transfer suite (ignores --source/--target/--task)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model folder, hub id or embedded model name (default {DEFAULT_MODEL})")
    p.add_argument("--source", help="source task data file (JSONL or JSON list)")
    p.add_argument("--target", help="target task data file")
    p.add_argument("--task", help="target task format (sentiment, mc, pairs) or a YAML/JSON task file")
    p.add_argument("--source-task", default=None, help="source task format or file (default: --task)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list from {','.join(METHODS)}")
    p.add_argument("--output", default=None, help="result JSON (one pair; default: print a summary only)")
    p.add_argument("--seeds", type=int, default=None, help="seeds of the source sample (default 3; suite 2)")
    p.add_argument("--n-test", type=int, default=None, help="target test items (default 400; suite per family)")
    p.add_argument("--n-dev", type=int, default=None, help="target dev items for selection (default 100)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the dev/test split (default 0)")
    g = p.add_argument_group("method")
    g.add_argument("--pool-size", type=int, default=None, help="source pool size (default 128; suite 48)")
    g.add_argument("--num-selected", type=int, default=None, help="samples building a CAST vector (default 32)")
    g.add_argument("--num-demos", type=int, default=None, help="demos per few-shot prompt when extracting (default 4)")
    g.add_argument("--icl-shots", type=_ints, default=None, help="candidate k for icl/target_icl (default 1,2,4)")
    g.add_argument("--alphas", type=_floats, default=None, help="alpha candidates, first = base (default 1,0.5,2,4)")
    g.add_argument("--modes", type=_strs, default=None, help="steering modes to try (default norm_preserving,add)")
    g.add_argument("--positions", type=_strs, default=None, help="position policies to try (default last_prompt,all)")
    g.add_argument("--layer-fractions", type=_floats, default=None,
                   help="window starts as fractions of depth (default 0.1,0.2,0.3,0.4,0.5)")
    g.add_argument("--layer-width", type=int, default=None, help="window width (default depth/10)")
    g.add_argument("--no-vary-width", action="store_true", help="skip the search's window-width stage")
    g.add_argument("--tune-each-seed", action="store_true", help="search every seed's vector (default: seed 0's)")
    g.add_argument("--ablation-settings", choices=("own", "cast"), default=None,
                   help="cast_random_selection/mean_diff: own dev search (default) or CAST's setting (suite)")
    g.add_argument("--calibration", choices=("none", "dev"), default=None,
                   help="label scoring: none (default) or dev-set batch calibration for every method")
    g.add_argument("--scoring", choices=("auto", "labels", "generate"), default=None,
                   help="auto (default): label words for closed label sets, generation otherwise")
    g.add_argument("--max-new-tokens", type=int, default=None, help="generation scoring: tokens (default 8)")
    g.add_argument("--latency-items", type=int, default=None, help="test items timed per method (default 64; suite 16)")
    g.add_argument("--latency-batch", type=int, default=None, help="batch size of the latency phase (default 16)")
    g.add_argument("--latency-rounds", type=int, default=None, help="timed passes over the latency items (default 3)")
    e = p.add_argument_group("suite and engine")
    e.add_argument("--pairs", type=_strs, default=None, help="suite: only these pairs (names as in the report)")
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


_OPTION_FIELDS = {"seeds": "seeds", "n_test": "n_test", "n_dev": "n_dev", "pool_size": "pool_size",
                  "num_selected": "num_selected", "num_demos": "num_demos", "icl_shots": "icl_shots",
                  "alphas": "alphas", "modes": "modes", "positions": "positions",
                  "layer_fractions": "layer_fractions", "layer_width": "layer_width",
                  "ablation_settings": "ablation_settings", "calibration": "calibration", "scoring": "scoring",
                  "max_new_tokens": "max_new_tokens", "latency_items": "latency_items",
                  "latency_batch": "latency_batch", "latency_rounds": "latency_rounds"}


def _overrides(args) -> dict:
    out = {field: getattr(args, opt) for opt, field in _OPTION_FIELDS.items() if getattr(args, opt) is not None}
    if args.tune_each_seed:
        out["tune_each_seed"] = True
    if args.no_vary_width:
        out["vary_width"] = False
    out["split_seed"] = args.split_seed
    return out


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
    import os

    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    # engine core in this process: one process less (memory is the scarce resource on a shared
    # 24 GiB machine), and the evaluation waits on every batch anyway
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    with cpu_threads(args.threads):
        return _run(args)


class cpu_threads:
    """Run with ``n`` torch/OpenMP threads (the engine reads OMP_NUM_THREADS when it starts),
    then restore the previous setting. Over-subscribed 2-core machines run a 135M model
    faster on one thread: two threads spin-wait on each other while other jobs hold the cores."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        import os

        import torch

        self.saved = (os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads())
        if self.n > 0:
            os.environ["OMP_NUM_THREADS"] = str(self.n)
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        import os

        import torch

        env, threads = self.saved
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env
        torch.set_num_threads(threads)
        return False


def _run(args) -> int:
    from cast_vllm.evaluation.harness import EvalConfig, evaluate
    from cast_vllm.evaluation.suite import run_suite

    engine_kwargs = {"dtype": args.dtype, "max_model_len": args.max_model_len, "kv_cache_gib": args.kv_cache_gib}
    progress = not args.no_progress
    try:
        if args.suite and args.report_only:
            from cast_vllm.evaluation.report import write_report
            from cast_vllm.evaluation.suite import output_stem

            stem = Path(args.out_dir) / output_stem(args.model)
            if not stem.with_suffix(".json").is_file():
                print(f"cast-vllm eval: {stem}.json does not exist; run the suite first", file=sys.stderr)
                return 2
            write_report(json.loads(stem.with_suffix(".json").read_text()), stem.with_suffix(".md"),
                         stem.with_suffix(".png"))
            print(f"wrote {stem}.md and {stem}.png")
            return 0
        if args.suite:
            suite = run_suite(args.model, args.out_dir, data_dir=args.data_dir, pairs=args.pairs,
                              overrides=_overrides(args), resume=not args.no_resume, progress=progress,
                              engine_kwargs=engine_kwargs)
            for r in suite["pairs"]:
                print(_summary(r), end="\n\n")
            from cast_vllm.evaluation.report import goal_check
            from cast_vllm.evaluation.suite import output_stem

            print(json.dumps(goal_check(suite["pairs"]), indent=1))
            print(f"wrote {Path(args.out_dir) / output_stem(args.model)}.{{json,md,png}}")
            return 0
        missing = [o for o in ("source", "target", "task") if not getattr(args, o)]
        if missing:
            print(f"cast-vllm eval: --{', --'.join(missing)} required (or --suite default)", file=sys.stderr)
            return 2
        cfg = EvalConfig(model=args.model, source=args.source, target=args.target, task=args.task,
                         source_task=args.source_task, methods=args.methods, **_overrides(args))
        from cast_vllm.evaluation.engine import EvalEngine
        from cast_vllm.model_zoo import resolve

        cfg.validate()
        engine = EvalEngine(resolve(args.model), **engine_kwargs)
        try:
            result = evaluate(cfg, engine=engine, progress=progress)
        finally:
            engine.close()
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
