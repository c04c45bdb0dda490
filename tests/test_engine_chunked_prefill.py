"""Position policies hold when a long prompt is split across steps (chunked prefill)."""

import pytest
from tiny_models import random_vector
from vllm import SamplingParams

from cast_vllm.hf_steering import greedy_generate
from cast_vllm.spec import parse_steering

PROMPT = " ".join(["I loved this movie, it was wonderful and moving. The capital of France is Paris."] * 6)
SPECS = [
    {"vector": "A", "scale": 8.0, "mode": "norm_preserving", "positions": "last_prompt"},
    {"vector": "A", "scale": 3.0, "positions": "prompt"},
    {"vector": "A", "scale": 3.0, "positions": "generated"},
    [{"vector": "A", "scale": 2.0, "positions": "prompt"}, {"vector": "A", "scale": -2.0, "positions": "generated"}],
]


@pytest.fixture(scope="module")
def setup(steered_llm):
    vec = random_vector(7)
    llm = steered_llm(vectors={"A": vec}, max_model_len=512, max_num_seqs=4, max_num_batched_tokens=32,
                      enable_chunked_prefill=True)
    return llm, vec


def test_policies_across_prefill_chunks(setup, hf_llama):
    llm, vec = setup
    hf, tok = hf_llama
    ids = tok(PROMPT)["input_ids"]
    assert len(ids) > 3 * 32, "the prompt must span several prefill chunks"
    outs = llm.generate([PROMPT] * len(SPECS),
                        [SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, extra_args={"steering": s})
                         for s in SPECS], use_tqdm=False)
    for spec, out in zip(SPECS, outs):
        comps = parse_steering({"steering": spec})
        assert list(out.outputs[0].token_ids) == greedy_generate(hf, ids, 6, [(c, vec) for c in comps])[0], spec
