"""Run one steered batch on an engine with tensor / pipeline parallelism, in its own process.

``python parallel_engine.py MODEL TP PP OUT.json [--compiled]``: the module's requests (mixed
steered and unsteered, more distinct vectors than slots) through ``SteeredLLM`` with vLLM's
multiprocess engine, each rank on its own core; writes tokens, top logprobs and every worker's
counters. Workers keep shipped vectors in ``$CAST_VLLM_WORKER_HOME`` (the caller may give them a
home of their own). Used by test_parallel.py; runnable by hand.
"""

from __future__ import annotations

import json
import os
import sys

#: (prompt, steering or None): 5 vectors on 3 slots, one vector at two scales, one mix
REQUESTS = [
    ("the weather today is", None),
    ("the weather today is", {"vector": "v1", "scale": 2.0}),
    ("my favourite colour is", {"vector": "v2", "scale": 1.5, "positions": "generated"}),
    ("once upon a time there", {"vector": "v3", "scale": 1.0, "mode": "norm_preserving"}),
    ("hello world, said the", [{"vector": "v1", "scale": 1.0}, {"vector": "v4", "scale": 0.5}]),
    ("a quick brown fox", {"vector": "v5", "scale": 3.0, "layers": [1, 2]}),
    ("steering vectors are", None),
    ("the weather today is", {"vector": "v1", "scale": -2.0}),
]
MAX_TOKENS, TOP_LOGPROBS, SLOTS = 8, 3, 3


def main(model: str, tp: int, pp: int, out: str, compiled: bool) -> None:
    from tiny_models import ENGINE_DEFAULTS, random_vector
    from vllm import SamplingParams

    from cast_vllm import SteeredLLM
    from cast_vllm.engine.shutdown import shutdown_llm

    llm = SteeredLLM(model, tensor_parallel_size=tp, pipeline_parallel_size=pp, max_steering_vectors=SLOTS,
                     **{**ENGINE_DEFAULTS, "enforce_eager": not compiled})
    for k in range(1, 6):
        llm.register_vector(f"v{k}", random_vector(k, scale=3.0))
    params = [SamplingParams(max_tokens=MAX_TOKENS, temperature=0, logprobs=TOP_LOGPROBS,
                             extra_args=None if s is None else {"steering": s}) for _, s in REQUESTS]
    outputs = llm.generate([p for p, _ in REQUESTS], params, use_tqdm=False)
    result = {
        "tokens": [list(o.outputs[0].token_ids) for o in outputs],
        "logprobs": [[{str(t): lp.logprob for t, lp in step.items()} for step in o.outputs[0].logprobs]
                     for o in outputs],
        "steered": [o.steering is not None for o in outputs],
        "workers": llm.steering_stats(),
        "hashes": {name: llm.vector_store.get(name).content_hash for name in llm.list_vectors()},
    }
    shutdown_llm(llm)
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    model_dir, tp_size, pp_size, out_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    main(model_dir, tp_size, pp_size, out_path, compiled="--compiled" in sys.argv[5:])
