"""Qwen2, Qwen3, Gemma3 and Mistral wrappers steer like the HF reference (Llama is covered in depth
elsewhere; probing of every family: test_activations.py, test_architecture_registry.py)."""

import gc

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from vllm import SamplingParams

from cast_vllm import SteeredLLM, SteeringVector
from cast_vllm.engine.architectures import wrapper_for
from cast_vllm.hf_steering import greedy_generate
from cast_vllm.spec import parse_steering

PROMPTS = ["hello world, the quick brown fox", "I loved this movie, it was", "The capital of France is"]
SPECS = [None, {"vector": "A", "scale": 2.0},
         {"vector": "A", "scale": 4.0, "mode": "norm_preserving", "positions": "last_prompt", "layers": [1, 2]}]


def test_unsupported_architecture_lists_supported():
    with pytest.raises(ValueError, match="not supported for steering; supported: .*LlamaForCausalLM"):
        wrapper_for(["GPT2LMHeadModel"])


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "gemma3", "mistral"])
def test_architecture_matches_reference(tiny_model_dir, arch):
    model_dir = tiny_model_dir(arch)
    g = torch.Generator().manual_seed(5)
    vec = SteeringVector({i: torch.randn(64, generator=g) for i in range(4)})
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    expected = []
    for prompt, spec in zip(PROMPTS, SPECS):
        comps = parse_steering({"steering": spec}) if spec else []
        expected.append(greedy_generate(hf, tok(prompt)["input_ids"], 6, [(c, vec) for c in comps])[0])
    llm = SteeredLLM(str(model_dir), dtype="float32", enforce_eager=True, max_model_len=256, max_num_seqs=8)
    try:
        llm.register_vector("A", vec)
        outs = llm.generate(PROMPTS, [SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True,
                                                     extra_args=None if s is None else {"steering": s})
                                      for s in SPECS], use_tqdm=False)
    finally:
        del llm
        gc.collect()
    got = [list(o.outputs[0].token_ids) for o in outs]
    assert got == expected
    assert got[1] != got[0]
