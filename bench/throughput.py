"""Thin script: the benchmark is cast_vllm.benchmarks.throughput (also: cast-vllm bench throughput).

    python bench/throughput.py --help

Results go to bench/results/ beside this file unless the options say otherwise.
"""

from pathlib import Path

from cast_vllm.benchmarks import throughput

if __name__ == "__main__":
    raise SystemExit(throughput.main(prog="bench/throughput.py", results_dir=Path(__file__).resolve().parent / "results"))
