"""Slot pressure (more distinct vectors than slots) and prefix-cache isolation."""

import pytest
from tiny_models import random_vector
from vllm import SamplingParams

from cast_vllm.hf_steering import greedy_generate
from cast_vllm.spec import SteeringComponent

LONG_PROMPT = " ".join(["The capital of France is Paris. I loved this movie, it was wonderful."] * 8)


@pytest.fixture(scope="module")
def vectors():
    return {f"v{i}": random_vector(10 + i) for i in range(10)}


@pytest.fixture(scope="module")
def engine(steered_llm, vectors):
    """10 vectors, 3 slots; prefix caching with 32-token blocks."""
    return steered_llm(vectors=vectors, max_steering_vectors=3, max_model_len=512, max_num_seqs=16,
                       enable_prefix_caching=True, block_size=32)


def sp(spec=None, n=6):
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, extra_args=None if spec is None else {"steering": spec})


def test_more_vectors_than_slots_all_complete_correctly(engine, hf_llama, vectors):
    prompts = [f"hello world {i}, the quick brown" for i in range(10)]
    outs = engine.generate(prompts, [sp({"vector": f"v{i}", "scale": 2.0}) for i in range(10)], use_tqdm=False)
    hf, tok = hf_llama
    for i, out in enumerate(outs):
        comp = SteeringComponent(vector=f"v{i}", scale=2.0)
        ref, _ = greedy_generate(hf, tok(prompts[i])["input_ids"], 6, [(comp, vectors[f"v{i}"])])
        assert list(out.outputs[0].token_ids) == ref, f"request {i}"
    scheduler = engine.llm_engine.engine_core.engine_core.scheduler
    assert scheduler._cast_budget.waits > 0, "10 vectors on 3 slots must have made requests wait"
    stats = engine.steering_stats()[0]
    assert stats["slots"] == 3 and stats["loads"] >= 10 and stats["evictions"] >= 7


def test_prefix_cache_never_shared_across_steering(engine, hf_llama, vectors):
    """Same long prompt: steered, unsteered, steered with another vector; each as if computed fresh."""
    sequence = [{"vector": "v1", "scale": 2.0}, None, {"vector": "v2", "scale": 2.0}, {"vector": "v1", "scale": 2.0}]
    got = [list(engine.generate([LONG_PROMPT], sp(s, 8), use_tqdm=False)[0].outputs[0].token_ids)
           for s in sequence]
    hf, tok = hf_llama
    ids = tok(LONG_PROMPT)["input_ids"]
    for spec, tokens in zip(sequence, got):
        comps = [] if spec is None else [(SteeringComponent(**spec), vectors[spec["vector"]])]
        assert tokens == greedy_generate(hf, ids, 8, comps)[0], f"spec {spec}"
    assert len({tuple(x) for x in got}) == 3, "the three steering configs should give three outputs"


def test_cache_hits_only_within_the_same_steering(engine):
    prompt = LONG_PROMPT + " cache check"

    def cached(spec):
        return engine.generate([prompt], sp(spec, 2), use_tqdm=False)[0].num_cached_tokens

    cached(None)
    assert cached(None) > 0, "identical unsteered prompts should share the prefix cache"
    assert cached({"vector": "v3", "scale": 2.0}) == 0, "steered must not reuse unsteered blocks"
    assert cached({"vector": "v3", "scale": 2.0}) > 0, "identical steering should share its own blocks"
    assert cached({"vector": "v3", "scale": 2.5}) == 0, "a different scale is different steering"


def test_an_alpha_sweep_shares_one_slot_row(engine, hf_llama, vectors):
    """The table holds unscaled directions and each token its scale: 8 scales of one vector, and
    3 of a two-vector mix, run at once on 3 slots without waiting, one row each, and every output
    is the reference at its own scale."""
    specs = [{"vector": "v5", "scale": s} for s in (0.5, 1.0, 1.5, 2.0, -1.0, 3.0, 4.0, 0.0)]
    specs += [[{"vector": "v6", "scale": s}, {"vector": "v7", "scale": 2 * s, "layers": [1, 2]}] for s in (1.0, 2.0, -0.5)]
    prompts = [f"the quick brown fox number {i}" for i in range(len(specs))]
    budget = engine.llm_engine.engine_core.engine_core.scheduler._cast_budget
    waits, loads = budget.waits, engine.steering_stats()[0]["loads"]
    outs = engine.generate(prompts, [sp(s) for s in specs], use_tqdm=False)
    hf, tok = hf_llama
    for prompt, spec, out in zip(prompts, specs, outs):
        comps = [SteeringComponent(**c) for c in (spec if isinstance(spec, list) else [spec])]
        ref, _ = greedy_generate(hf, tok(prompt)["input_ids"], 6, [(c, vectors[c.vector]) for c in comps])
        assert list(out.outputs[0].token_ids) == ref, spec
    assert budget.waits == waits, "requests that differ only in scale must not wait for slots"
    assert engine.steering_stats()[0]["loads"] - loads <= 2, "one row for the sweep, one for the mix"
