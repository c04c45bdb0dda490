"""The vLLM engine steers exactly like the HF forward-hook reference, per request, in one batch."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from vllm import LLM, SamplingParams

from cast_vllm import SteeredLLM, SteeringVector
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
ENGINE_KW = dict(dtype="float32", enforce_eager=True, max_model_len=256, max_num_seqs=16, seed=0)


def make_vectors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "A": SteeringVector({i: torch.randn(64, generator=g) for i in range(4)}, {"method": "test"}),
        "B": SteeringVector({1: torch.randn(64, generator=g), 2: torch.randn(64, generator=g)}, {"method": "test"}),
        "C": SteeringVector({i: torch.randn(64, generator=g) for i in range(4)}, {"method": "test"}),
    }


MIXED = [
    None,
    {"vector": "A", "scale": 2.0},
    {"vector": "B", "scale": 8.0, "mode": "norm_preserving", "positions": "last_prompt"},
    {"vector": "C", "scale": 3.0, "positions": "generated"},
    [{"vector": "A", "scale": 1.0, "layers": [0, 3], "positions": "prompt"},
     {"vector": "C", "scale": 2.0, "layers": [1], "positions": "all"}],
]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def vectors():
    return make_vectors()


@pytest.fixture(scope="module")
def engine(model_dir, vectors):
    llm = SteeredLLM(str(model_dir), **ENGINE_KW)
    for name, vec in vectors.items():
        llm.register_vector(name, vec)
    yield llm
    del llm


@pytest.fixture(scope="module")
def hf(model_dir):
    return (AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(model_dir))


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


def test_mixed_batch_matches_hf_reference(engine, hf, vectors):
    got = run_mixed(engine)
    for prompt, spec, (tokens, logprobs) in zip(PROMPTS, MIXED, got):
        ref_tokens, ref_logprobs = reference(hf, vectors, prompt, spec)
        assert tokens == ref_tokens, f"tokens differ for spec {spec}"
        assert logprobs == pytest.approx(ref_logprobs, abs=2e-3), f"logprobs differ for spec {spec}"


def test_steering_changes_output(engine):
    got = run_mixed(engine)
    plain = engine.generate(PROMPTS, [params(None)] * len(PROMPTS), use_tqdm=False)
    changed = [g[0] != list(p.outputs[0].token_ids) for g, p in zip(got, plain)]
    assert changed[0] is False
    assert all(changed[1:]), "every steered request should differ from its unsteered run"


def test_unsteered_bit_identical_to_plain_engine(engine, model_dir):
    mixed = run_mixed(engine)
    plain = LLM(str(model_dir), **ENGINE_KW)
    try:
        outs = plain.generate(PROMPTS[:1], params(None), use_tqdm=False)
    finally:
        del plain
    assert list(outs[0].outputs[0].token_ids) == mixed[0][0]
    ref_lp = [lp[t].logprob for lp, t in zip(outs[0].outputs[0].logprobs, outs[0].outputs[0].token_ids)]
    assert ref_lp == mixed[0][1]  # bitwise, not approximately
