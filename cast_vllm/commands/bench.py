"""`cast-vllm bench NAME [options]`: the benchmarks of cast_vllm.benchmarks (also bench/NAME.py).

They ship in the package, so the command works from any install; ``cast-vllm bench NAME --help``
lists a benchmark's options. In a source checkout (editable install) results go to
bench/results/ beside the recorded ones, elsewhere to ./bench-results/ unless --out says.
"""

import importlib
import sys

from cast_vllm.benchmarks import BENCHMARKS


def add_arguments(p):
    p.add_argument("which", metavar="NAME",
                   help="; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()))
    p.add_argument("bench_args", nargs="...", help="options of the benchmark (cast-vllm bench NAME --help)")


def run(args) -> int:
    if args.which not in BENCHMARKS:
        print(f"cast-vllm bench: no benchmark {args.which!r}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"cast_vllm.benchmarks.{args.which}")
    return int(module.main(list(args.bench_args) + list(args.extra), prog=f"cast-vllm bench {args.which}") or 0)
