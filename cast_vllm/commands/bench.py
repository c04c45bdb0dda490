"""`cast-vllm bench throughput|latency|kernel|...`: runs a script from the checkout's bench/ folder.

Benchmarks are scripts beside their recorded results (bench/results/); this command finds
them next to the installed package (an editable install or a source checkout).
"""

import runpy
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
ALIASES = {"latency": "serving"}


def add_arguments(p):
    available = sorted(f.stem for f in BENCH_DIR.glob("*.py")) if BENCH_DIR.is_dir() else []
    p.add_argument("which", help=f"benchmark: {', '.join(available + sorted(ALIASES)) or 'none found'}")
    p.add_argument("bench_args", nargs="...", help="options passed to the benchmark script")


def run(args) -> int:
    script = BENCH_DIR / f"{ALIASES.get(args.which, args.which)}.py"
    if not script.is_file():
        print(f"cast-vllm bench: no benchmark {args.which!r} in {BENCH_DIR} (needs a source checkout)",
              file=sys.stderr)
        return 2
    module = runpy.run_path(str(script), run_name="cast_vllm_bench")
    return int(module["main"](list(args.bench_args) + list(args.extra)) or 0)
