"""The benchmarks behind bench/results/, importable from an installed package.

``cast-vllm bench NAME [options]`` and the thin scripts ``bench/NAME.py`` both run
``cast_vllm.benchmarks.NAME.main``. Results go to ``--out`` / ``--out-dir`` when given, else
to ``default_results_dir()``.
"""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = {
    "throughput": "offline steered vs unsteered throughput (one process, paired runs)",
    "serving": "HTTP throughput and latency, cast-vllm serve vs plain vLLM",
    "latency": "per-query latency: CAST (zero-shot + steering) vs cross-task ICL, per-query and fixed demos",
    "extraction": "activation extraction prompts/s: vLLM probe vs HF hooks, Ray workers",
    "kernel": "the fused steering kernel's bandwidth (Triton on CUDA, torch reference on CPU)",
    "scales": "an alpha sweep in one batch: per-token scales (one slot) vs scales folded into rows",
    "peers": "the same steering through our engine and peer systems (repeng, steering-vectors, vllm-lens): token identity, speed",
}


def default_results_dir() -> Path:
    """``bench/results`` of the source checkout this package runs from (an editable install:
    the recorded results live there), else ``./bench-results`` in the current directory."""
    checkout = Path(__file__).resolve().parents[2] / "bench" / "results"
    return checkout if checkout.is_dir() else Path.cwd() / "bench-results"
