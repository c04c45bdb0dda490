"""Thin script: the benchmark is cast_vllm.benchmarks.serving (also: cast-vllm bench serving).

    python bench/serving.py --help

Results go to bench/results/ beside this file unless the options say otherwise.
"""

from pathlib import Path

from cast_vllm.benchmarks import serving

if __name__ == "__main__":
    raise SystemExit(serving.main(prog="bench/serving.py", results_dir=Path(__file__).resolve().parent / "results"))
