"""Thin script: the benchmark is cast_vllm.benchmarks.peers (also: cast-vllm bench peers).

    python bench/peers.py --help

Results go to bench/results/ beside this file unless the options say otherwise.
"""

from pathlib import Path

from cast_vllm.benchmarks import peers

if __name__ == "__main__":
    raise SystemExit(peers.main(prog="bench/peers.py", results_dir=Path(__file__).resolve().parent / "results"))
