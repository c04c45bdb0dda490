"""One source -> target evaluation: every method on identical test items through one engine.

``evaluate`` runs the protocol (notes/cast-method.md, issue 6) as a sequence of phases, each a
function in its own module:

1. data (``data.py``): the target is split once into dev and test (``splits.py``, fixed seed);
   the source pool excludes every target dev/test text;
2. dev phase A (``prompted.py``): zero-shot on dev; ``icl`` and ``target_icl`` for each number
   of demonstrations ``k`` (``target_icl`` draws its demos from the other dev items); the best
   ``k`` is chosen on dev accuracy;
3. vectors (``steered.py``): every steered method's vector per seed, from the source pool
   (``source_vectors.py``), registered in the engine;
4. dev phase B (``steered.py``): the steered methods' coordinate search (``search.py``) on dev;
   the best setting is chosen on dev accuracy. Selection only ever sees dev items;
5. test phase (``outcomes.py``): every method at its chosen hyper-parameters on the same test
   items, in one batched engine call; the steered methods for every seed of the source sample;
6. latency (``latency.py``): the first ``latency_items`` test items of each method in batches
   of ``latency_batch``, the methods interleaved batch by batch so machine load hits them alike;
7. result (``result.py``): accuracy (mean and std over seeds), label shares, and a paired
   significance test of each method against zero-shot on the same items (``stats.py``).

Seeds vary the source sample (IDEAL's Monte Carlo cascades, random selection, demonstration
assignment) and the random control; the split is fixed. By default the search runs on seed
0's vector and the chosen setting is reused for the other seeds (``tune_each_seed`` searches
every seed); ``ablation_settings="cast"`` gives ``cast_random_selection`` and ``mean_diff``
CAST's chosen setting instead of their own search (cheaper; the vectors are then compared at
equal settings). ``random_vector`` always uses CAST's setting of the same seed.
"""

from __future__ import annotations

import time
from pathlib import Path

from cast_vllm.evaluation.backend import EvalBackend, open_backend
from cast_vllm.evaluation.config import EvalConfig
from cast_vllm.evaluation.data import EvalData, load_data
from cast_vllm.evaluation.engine import EvalEngine
from cast_vllm.evaluation.jobs import RunContext
from cast_vllm.evaluation.latency import measure_latency
from cast_vllm.evaluation.methods import STEERED_METHODS
from cast_vllm.evaluation.outcomes import run_test_phase
from cast_vllm.evaluation.prompted import prompted_dev_phase
from cast_vllm.evaluation.result import PhaseResults, assemble_result
from cast_vllm.evaluation.source_vectors import ActivationCache, SourceVectors
from cast_vllm.evaluation.steered import build_vectors, steered_dev_phase


def evaluate(cfg: EvalConfig, engine: EvalEngine | None = None, acts: ActivationCache | None = None,
             progress: bool = True) -> dict:
    """Run the protocol (module doc) and return the result dictionary (JSON-ready). Without
    ``engine`` / ``acts``, new ones are made for ``cfg.model`` (and the engine closed after)."""
    cfg.validate()
    started = time.perf_counter()
    backend = open_backend(cfg.model, engine=engine, acts=acts, progress=progress)
    try:
        return _run_phases(cfg, backend, progress, started)
    finally:
        backend.close()


def _run_phases(cfg: EvalConfig, backend: EvalBackend, progress: bool, started: float) -> dict:
    data = load_data(cfg, backend.engine.tokenizer)
    ctx = RunContext(cfg, backend.engine, data.labels, progress)
    t_vectors = time.perf_counter()
    source = source_vectors(cfg, backend, data)
    prompted = prompted_dev_phase(ctx, data, source, backend.acts)
    vectors = build_vectors(ctx, source)
    vector_seconds = time.perf_counter() - t_vectors
    steered = steered_dev_phase(ctx, data, vectors)
    tested = run_test_phase(ctx, data, prompted, vectors, steered)
    latency = measure_latency(ctx, tested.jobs) if cfg.latency_items > 0 else {}
    return assemble_result(PhaseResults(ctx, backend.model_path, data, source, prompted, vectors, steered, tested,
                                        latency, started, vector_seconds))


def source_vectors(cfg: EvalConfig, backend: EvalBackend, data: EvalData) -> SourceVectors | None:
    """The source pool's vector builder, when a steered method or cross-task ICL (its
    embeddings) needs one."""
    if not (any(m in STEERED_METHODS for m in cfg.methods) or "icl" in cfg.methods):
        return None
    def vectors_of(pool, name: str, extra_sources=()) -> SourceVectors:
        return SourceVectors(backend.acts, pool, data.sspec, num_layers=backend.engine.num_layers,
                             num_selected=min(cfg.num_selected, len(pool)), num_demos=cfg.num_demos,
                             model=cfg.model, name=name, target_prompts=data.zero_dev, extra_sources=extra_sources,
                             similarity_threshold=cfg.similarity_threshold)

    return vectors_of(data.pool, Path(cfg.source).stem, [vectors_of(pool, name) for name, pool in data.extra_pools])
