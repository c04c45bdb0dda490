"""Activation-probe architectures for vLLM's pooling runner.

A probe is the stock vLLM causal LM whose forward returns the residual stream
(``hidden_states + residual``) after the chosen decoder layers, concatenated along the hidden
axis: ``[tokens, len(layers) * hidden]``. Run with ``runner="pooling"``, ``convert="embed"``
and ``PoolerConfig(pooling_type="LAST", use_activation=False)``, ``LLM.encode`` then yields the
last-prompt-token state of every chosen layer, which the host splits back per layer.

Layer ``i`` is the output of decoder layer ``i`` (HF ``output_hidden_states[i + 1]``). Two ways
to read it, chosen per model:

- vLLM's auxiliary hidden-state hook (``_set_aux_hidden_state_layers``: Llama, Mistral, Qwen2,
  Qwen3), which numbers that point ``i + 1`` (0 is the embedding output); the inner model's
  compiled forward returns them;
- for inner models without that hook (Gemma3), the probe runs the decoder loop itself over
  ``decoder_layers(model)``: the inner model's compiled forward is bypassed (eager, as the
  activation readers run anyway), and pipeline parallelism is refused.

One probe per entry of the architecture registry (``CastProbe<vllm_class>``). This module is
imported by the plugin in every vLLM process, so it stays light: the classes are built on
first attribute access (module ``__getattr__``), which is also how vLLM's lazy registry
resolves ``"cast_vllm.engine.probe_model:CastProbeLlamaForCausalLM"``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cast_vllm.engine.architectures import (Architecture, ArchitectureError, decoder_layers, lookup, probe_for,
                                            probe_targets, resolve_path)

#: hf_config key holding the probed layers (a list of 0-based decoder layer indices).
PROBE_LAYERS_KEY = "cast_probe_layers"


class ProbeError(ArchitectureError):
    """The model cannot be probed as asked (unsupported architecture, bad layers)."""


def probe_architecture_for(architectures: Iterable[str]) -> str:
    """The probe name for a checkpoint's ``config.architectures``."""
    try:
        return probe_for(architectures)
    except ArchitectureError as exc:
        raise ProbeError(str(exc)) from None


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
    for name, target in probe_targets().items():
        if name not in known:
            ModelRegistry.register_model(name, target)


def _layers_owner(model, arch: Architecture):
    """The module holding the decoder layers (vLLM's inner model, e.g. ``model.model``)."""
    owner_path = arch.vllm_layers.rpartition(".")[0]
    return resolve_path(model, owner_path) if owner_path else model


def _build(arch: Architecture):
    import torch
    from vllm.sequence import IntermediateTensors

    name, base = arch.probe, arch.base_class()

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
        owner = _layers_owner(self, arch)
        self.cast_probe_aux = hasattr(owner, "_set_aux_hidden_state_layers")
        if self.cast_probe_aux:
            # aux index i + 1 = output of decoder layer i (index 0 is the embedding output)
            owner._set_aux_hidden_state_layers(tuple(layer + 1 for layer in layers))
        elif vllm_config.parallel_config.pipeline_parallel_size > 1:
            raise ProbeError(f"{name} reads layers in its own decoder loop, which does not support "
                             "pipeline parallelism; use pipeline_parallel_size=1")

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        if not self.cast_probe_aux:
            return _loop_forward(self, input_ids, positions, inputs_embeds, **kwargs)
        out = _layers_owner(self, arch)(input_ids, positions, intermediate_tensors, inputs_embeds)
        if isinstance(out, IntermediateTensors):
            return out
        _, aux = out
        return torch.cat(aux, dim=-1)

    def _loop_forward(self, input_ids, positions, inputs_embeds, **kwargs):
        """The stock decoder loop, keeping ``hidden + residual`` after each probed layer."""
        hidden = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
        residual, wanted, kept = None, set(self.cast_probe_layers), []
        for i, layer in enumerate(decoder_layers(self)):
            hidden, residual = layer(positions, hidden, residual, **kwargs)
            if i in wanted:
                kept.append(hidden + residual)
        return torch.cat(kept, dim=-1)

    return type(name, (base,), {"__init__": __init__, "forward": forward, "cast_architecture": arch,
                                "__module__": __name__, "__qualname__": name,
                                "__doc__": f"{base.__name__} returning probed residual streams."})


_CLASSES: dict[str, type] = {}


def __getattr__(name: str):
    if name == "PROBE_ARCHITECTURES":   # the current table, architectures registered later included
        return probe_targets()
    arch = lookup([name])
    if arch is None or name != arch.probe or arch.probing_gap:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _CLASSES:
        _CLASSES[name] = _build(arch)
    return _CLASSES[name]
