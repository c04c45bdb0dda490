"""Thin script: the benchmark is cast_vllm.benchmarks.scales (also: cast-vllm bench scales).

    python bench/scales.py --help

Results go to bench/results/ beside this file unless the options say otherwise.
"""

from pathlib import Path

from cast_vllm.benchmarks import scales

if __name__ == "__main__":
    raise SystemExit(scales.main(prog="bench/scales.py", results_dir=Path(__file__).resolve().parent / "results"))
