"""Thin script: the benchmark is cast_vllm.benchmarks.extraction (also: cast-vllm bench extraction).

    python bench/extraction.py --help

Results go to bench/results/ beside this file unless the options say otherwise.
"""

from pathlib import Path

from cast_vllm.benchmarks import extraction

if __name__ == "__main__":
    raise SystemExit(extraction.main(prog="bench/extraction.py", results_dir=Path(__file__).resolve().parent / "results"))
