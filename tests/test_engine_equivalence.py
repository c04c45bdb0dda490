"""The vLLM engine steers exactly like the HF forward-hook reference, per request, in one batch."""

import pytest
from tiny_models import random_vector
from vllm import SamplingParams

from cast_vllm.hf_steering import greedy_generate
from cast_vllm.spec import parse_steering

MAX_TOKENS = 8
PROMPTS = [
    "hello world, the quick brown fox",
    "The capital of France is Paris. The capital of Spain",
    "I loved this movie, it was wonderful",
    "Question: What is two plus two? Answer:",
    "This film was terrible, boring and",
]
ENGINE_KW = dict(max_num_seqs=16)   # the steered and the plain engine: the same settings


MIXED = [
    None,
    {"vector": "A", "scale": 2.0},
    {"vector": "B", "scale": 8.0, "mode": "norm_preserving", "positions": "last_prompt"},
    {"vector": "C", "scale": 3.0, "positions": "generated"},
    [{"vector": "A", "scale": 1.0, "layers": [0, 3], "positions": "prompt"},
     {"vector": "C", "scale": 2.0, "layers": [1], "positions": "all"}],
]


@pytest.fixture(scope="module")
def vectors():
    return {"A": random_vector(0), "B": random_vector(1, layers=[1, 2]), "C": random_vector(2)}


@pytest.fixture(scope="module")
def engine(steered_llm, vectors):
    return steered_llm(vectors=vectors, **ENGINE_KW)


def params(spec):
    return SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=0, ignore_eos=True,
                          extra_args=None if spec is None else {"steering": spec})


def reference(hf, vectors, prompt, spec):
    model, tok = hf
    comps = parse_steering({"steering": spec}) if spec is not None else []
    return greedy_generate(model, tok(prompt)["input_ids"], MAX_TOKENS, [(c, vectors[c.vector]) for c in comps])


def run_mixed(llm):
    outs = llm.generate(PROMPTS, [params(s) for s in MIXED], use_tqdm=False)
    return [(list(o.outputs[0].token_ids),
             [lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]) for o in outs]


def test_mixed_batch_matches_hf_reference(engine, hf_llama, vectors):
    got = run_mixed(engine)
    for prompt, spec, (tokens, logprobs) in zip(PROMPTS, MIXED, got):
        ref_tokens, ref_logprobs = reference(hf_llama, vectors, prompt, spec)
        assert tokens == ref_tokens, f"tokens differ for spec {spec}"
        assert logprobs == pytest.approx(ref_logprobs, abs=2e-3), f"logprobs differ for spec {spec}"


def test_default_slots_hold_a_batch_of_distinct_steering(engine):
    """Without max_steering_vectors the engine has one slot per sequence (max_num_seqs), so the
    mixed batch's distinct configurations ran without waiting."""
    run_mixed(engine)
    assert engine.steering_stats()[0]["slots"] == ENGINE_KW["max_num_seqs"]
    assert engine.llm_engine.engine_core.engine_core.scheduler._cast_budget.waits == 0


def test_steering_changes_output(engine):
    got = run_mixed(engine)
    plain = engine.generate(PROMPTS, [params(None)] * len(PROMPTS), use_tqdm=False)
    changed = [g[0] != list(p.outputs[0].token_ids) for g, p in zip(got, plain)]
    assert changed[0] is False
    assert all(changed[1:]), "every steered request should differ from its unsteered run"


def test_unsteered_bit_identical_to_plain_engine(engine, steered_llm):
    mixed = run_mixed(engine)
    outs = steered_llm(plain=True, **ENGINE_KW).generate(PROMPTS[:1], params(None), use_tqdm=False)
    assert list(outs[0].outputs[0].token_ids) == mixed[0][0]
    ref_lp = [lp[t].logprob for lp, t in zip(outs[0].outputs[0].logprobs, outs[0].outputs[0].token_ids)]
    assert ref_lp == mixed[0][1]  # bitwise, not approximately
