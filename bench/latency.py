"""Thin script: the benchmark is cast_vllm.benchmarks.latency (also: cast-vllm bench latency).

    python bench/latency.py --help

Results go to bench/results/ beside this file unless the options say otherwise.
"""

from pathlib import Path

from cast_vllm.benchmarks import latency

if __name__ == "__main__":
    raise SystemExit(latency.main(prog="bench/latency.py", results_dir=Path(__file__).resolve().parent / "results"))
