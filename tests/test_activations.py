"""Activation readers: the vLLM probe agrees with HF hooks (Llama, Qwen2, Qwen3); layer and
prompt refusals. One in-process vLLM engine per architecture."""

import numpy as np
import pytest
import torch

from cast_vllm.method.activations import (
    ActivationError, HFActivationReader, ReaderConfig, VLLMActivationReader, encode_prompts, load_tokenizer,
    model_info, parse_layers,
)
from cast_vllm.engine.probe_model import PROBE_ARCHITECTURES, ProbeError, probe_architecture_for

PROMPTS = [
    "I loved this movie, it was wonderful and moving.",
    "The capital of France is",
    "Q: What is two plus two?\nA:",
    "hello",
    "This film was terrible, boring and far too long. Sentiment:",
]


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def engines(request, tiny_model_dir):
    path = str(tiny_model_dir(request.param))
    layers = tuple(range(model_info(path).num_layers))
    vllm_reader = VLLMActivationReader(ReaderConfig(path, layers, backend="vllm", kv_cache_bytes=64 << 20,
                                                    max_model_len=256))
    hf_reader = HFActivationReader(ReaderConfig(path, layers, backend="hf", batch_size=2))
    yield path, vllm_reader, hf_reader
    vllm_reader.close()
    hf_reader.close()


def test_vllm_matches_hf(engines):
    path, vr, hr = engines
    ids = encode_prompts(load_tokenizer(path), PROMPTS * 3)
    a, b = vr.read(ids), hr.read(ids)
    assert a.shape == b.shape == (15, 4, 64) and a.dtype == np.float32
    rel = np.abs(a - b).max(axis=-1) / np.abs(b).max(axis=-1)
    assert rel.max() < 1e-4, f"max relative error {rel.max():.2e}"
    # and the rows really differ per prompt (nothing broadcast or shuffled)
    assert np.abs(a[0] - a[1]).max() > 1e-2
    np.testing.assert_allclose(a[:5], a[5:10], rtol=1e-5, atol=1e-5)


def test_hf_reader_equals_unbatched_forward(engines):
    path, _, hr = engines
    from transformers import AutoModelForCausalLM

    ids = encode_prompts(load_tokenizer(path), PROMPTS)
    got = hr.read(ids)                                     # batched, right-padded, sorted by length
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        hs = model(torch.tensor([ids[0]]), output_hidden_states=True).hidden_states
    for layer in range(3):                                 # hidden_states[i + 1] = output of layer i
        np.testing.assert_allclose(got[0, layer], hs[layer + 1][0, -1].numpy(), rtol=1e-5, atol=1e-5)
    # the last entry of output_hidden_states has the final norm applied; the hook does not
    assert np.abs(got[0, 3] - hs[4][0, -1].numpy()).max() > 1e-3


def test_layer_subset_is_a_slice(tiny_model_dir):
    path = str(tiny_model_dir("llama"))
    ids = encode_prompts(load_tokenizer(path), PROMPTS)
    full = HFActivationReader(ReaderConfig(path, (0, 1, 2, 3), backend="hf")).read(ids)
    part = HFActivationReader(ReaderConfig(path, (1, 3), backend="hf")).read(ids)
    np.testing.assert_allclose(part, full[:, [1, 3]], rtol=1e-6, atol=1e-6)


def test_prompt_too_long_is_refused(engines):
    _, vr, _ = engines
    with pytest.raises(ActivationError, match="more than the engine's max_model_len 256"):
        vr.read([[5] * 300])


def test_parse_layers():
    assert parse_layers(None, 4) == [0, 1, 2, 3] and parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("1-2", 30) == [1, 2] and parse_layers("5,3,3", 30) == [3, 5]
    assert parse_layers("-1", 30) == [29] and parse_layers("5-7,20", 30) == [5, 6, 7, 20]
    with pytest.raises(ActivationError, match="layer 30 out of range: the model has 30 layers"):
        parse_layers("30", 30)
    with pytest.raises(ActivationError, match="cannot read layers"):
        parse_layers("five", 30)
    with pytest.raises(ActivationError, match="empty"):
        parse_layers("7-5", 30)


def test_probe_registry_names():
    assert set(PROBE_ARCHITECTURES) == {"CastProbeLlamaForCausalLM", "CastProbeMistralForCausalLM",
                                        "CastProbeQwen2ForCausalLM", "CastProbeQwen3ForCausalLM",
                                        "CastProbeGemma3ForCausalLM"}
    assert probe_architecture_for(["Qwen2ForCausalLM"]) == "CastProbeQwen2ForCausalLM"
    with pytest.raises(ProbeError, match="no activation probe"):
        probe_architecture_for(["GPT2LMHeadModel"])
    with pytest.raises(ActivationError, match="unknown backend"):
        ReaderConfig("m", (0,), backend="onnx")
