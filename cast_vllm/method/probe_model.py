"""Activation-probe architectures for vLLM's pooling runner.

A probe is the stock vLLM causal LM whose forward returns the residual stream
(``hidden_states + residual``) after the chosen decoder layers, concatenated along the hidden
axis: ``[tokens, len(layers) * hidden]``. Run with ``runner="pooling"``, ``convert="embed"``
and ``PoolerConfig(pooling_type="LAST", use_activation=False)``, ``LLM.encode`` then yields the
last-prompt-token state of every chosen layer, which the host splits back per layer.

Layer ``i`` is the output of decoder layer ``i`` (HF ``output_hidden_states[i + 1]``); vLLM's
auxiliary hidden-state hook numbers that point ``i + 1`` (0 is the embedding output).

This module is imported by the plugin in every vLLM process, so it stays light: the classes
are built on first attribute access (module ``__getattr__``), which is also how vLLM's lazy
registry resolves ``"cast_vllm.method.probe_model:CastProbeLlamaForCausalLM"``.
"""

from __future__ import annotations

from typing import Any, Iterable

#: hf_config key holding the probed layers (a list of 0-based decoder layer indices).
PROBE_LAYERS_KEY = "cast_probe_layers"

#: probe name -> (vLLM module, base class)
_BASES: dict[str, tuple[str, str]] = {
    "CastProbeLlamaForCausalLM": ("vllm.model_executor.models.llama", "LlamaForCausalLM"),
    "CastProbeQwen2ForCausalLM": ("vllm.model_executor.models.qwen2", "Qwen2ForCausalLM"),
    "CastProbeQwen3ForCausalLM": ("vllm.model_executor.models.qwen3", "Qwen3ForCausalLM"),
}

#: what the plugin registers with ``ModelRegistry.register_model(name, target)``
PROBE_ARCHITECTURES: dict[str, str] = {name: f"{__name__}:{name}" for name in _BASES}

#: HF architecture name -> probe architecture name
PROBE_FOR_ARCHITECTURE: dict[str, str] = {
    "LlamaForCausalLM": "CastProbeLlamaForCausalLM",
    "MistralForCausalLM": "CastProbeLlamaForCausalLM",
    "Qwen2ForCausalLM": "CastProbeQwen2ForCausalLM",
    "Qwen3ForCausalLM": "CastProbeQwen3ForCausalLM",
}


class ProbeError(ValueError):
    """The model cannot be probed as asked (unsupported architecture, bad layers)."""


def probe_architecture_for(architectures: Iterable[str]) -> str:
    """The probe name for a checkpoint's ``config.architectures``."""
    archs = list(architectures or [])
    for arch in archs:
        if arch in PROBE_FOR_ARCHITECTURE:
            return PROBE_FOR_ARCHITECTURE[arch]
        if arch in PROBE_ARCHITECTURES:
            return arch
    raise ProbeError(
        f"no activation probe for architectures {archs}; supported: {sorted(PROBE_FOR_ARCHITECTURE)} "
        "(use the HF backend for other models)"
    )


def probe_hf_overrides(architectures: Iterable[str], layers: Iterable[int]) -> dict[str, Any]:
    """``hf_overrides`` that turn a checkpoint into a probe of ``layers``."""
    layers = sorted({int(layer) for layer in layers})
    if not layers:
        raise ProbeError("probe needs at least one layer")
    return {"architectures": [probe_architecture_for(architectures)], PROBE_LAYERS_KEY: layers}


def register_probes() -> None:
    """Register the probes in this process (the plugin does it in every vLLM process; calling
    it again is harmless). Needed when the engine runs in-process without the plugin."""
    from vllm import ModelRegistry

    known = set(ModelRegistry.get_supported_archs())
    for name, target in PROBE_ARCHITECTURES.items():
        if name not in known:
            ModelRegistry.register_model(name, target)


def _build(name: str):
    import importlib

    import torch
    from vllm.sequence import IntermediateTensors

    module_name, base_name = _BASES[name]
    base = getattr(importlib.import_module(module_name), base_name)

    def __init__(self, *, vllm_config, prefix: str = "", **kwargs):
        base.__init__(self, vllm_config=vllm_config, prefix=prefix, **kwargs)
        config = vllm_config.model_config.hf_config
        layers = getattr(config, PROBE_LAYERS_KEY, None)
        if not layers:
            raise ProbeError(f"{name} needs hf_overrides[{PROBE_LAYERS_KEY!r}] (a list of layer indices)")
        layers = sorted({int(layer) for layer in layers})
        n = config.num_hidden_layers
        if layers[0] < 0 or layers[-1] >= n:
            raise ProbeError(f"probe layers {layers} out of range: the model has {n} layers (0..{n - 1})")
        self.cast_probe_layers = tuple(layers)
        # aux index i + 1 = output of decoder layer i (index 0 is the embedding output)
        self.model._set_aux_hidden_state_layers(tuple(layer + 1 for layer in layers))

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        out = self.model(input_ids, positions, intermediate_tensors, inputs_embeds)
        if isinstance(out, IntermediateTensors):
            return out
        _, aux = out
        return torch.cat(aux, dim=-1)

    cls = type(name, (base,), {"__init__": __init__, "forward": forward, "__module__": __name__,
                               "__qualname__": name, "__doc__": f"{base_name} returning probed residual streams."})
    return cls


_CLASSES: dict[str, type] = {}


def __getattr__(name: str):
    if name in _BASES:
        if name not in _CLASSES:
            _CLASSES[name] = _build(name)
        return _CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
