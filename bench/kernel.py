"""Thin script: the benchmark is cast_vllm.benchmarks.kernel (also: cast-vllm bench kernel).

    python bench/kernel.py --help

Results go to bench/results/ beside this file unless the options say otherwise.
"""

from pathlib import Path

from cast_vllm.benchmarks import kernel

if __name__ == "__main__":
    raise SystemExit(kernel.main(prog="bench/kernel.py", results_dir=Path(__file__).resolve().parent / "results"))
