"""Steering wrapper architectures ``Cast<Arch>ForCausalLM``, selected with ``hf_overrides``.

Each wrapper is the stock vLLM model plus a slot table installed into its decoder layers; no
vLLM file is forked. Registered lazily (by "module:Class" string) from the plugin.
"""

from __future__ import annotations

import importlib

# wrapper name -> (vLLM module, stock class)
BASES = {
    "CastLlamaForCausalLM": ("vllm.model_executor.models.llama", "LlamaForCausalLM"),
    "CastQwen2ForCausalLM": ("vllm.model_executor.models.qwen2", "Qwen2ForCausalLM"),
    "CastQwen3ForCausalLM": ("vllm.model_executor.models.qwen3", "Qwen3ForCausalLM"),
    "CastGemma3ForCausalLM": ("vllm.model_executor.models.gemma3", "Gemma3ForCausalLM"),
}
STEERING_ARCHITECTURES = {name: f"cast_vllm.engine.wrappers:{name}" for name in BASES}
# HF architecture -> wrapper
WRAPPER_FOR = {base_cls: name for name, (_, base_cls) in BASES.items()}


def wrapper_for(hf_architectures: list[str]) -> str:
    """The wrapper for a checkpoint, or a ValueError listing what is supported."""
    for arch in hf_architectures or []:
        if arch in WRAPPER_FOR:
            return WRAPPER_FOR[arch]
        if arch in BASES:
            return arch
    raise ValueError(
        f"architecture {hf_architectures} is not supported for steering; supported: {sorted(WRAPPER_FOR)}")


def base_class(wrapper_name: str):
    module, cls = BASES[wrapper_name]
    return getattr(importlib.import_module(module), cls)
