"""The architecture registry: the one table of what cast-vllm can steer and probe.

One ``Architecture`` per model family names everything the engine needs about it:

- ``hf_names``: the values of a checkpoint's ``config.architectures`` it serves;
- ``vllm_module`` / ``vllm_class``: the stock vLLM model the steering wrapper
  (``Cast<vllm_class>``, ``engine/wrappers.py``) and the activation probe
  (``CastProbe<vllm_class>``, ``engine/probe_model.py``) subclass; no vLLM file is forked;
- ``hf_layers`` / ``vllm_layers``: the attribute path of the decoder layers in the HF model
  and in the vLLM model (``"model.layers"`` for every built-in family; repeng calls this
  ``model_layer_list``). Layer ``i`` of a steering vector is the output of
  ``decoder_layers(model)[i]``;
- ``steering_gap`` / ``probing_gap``: None when it works, else why it cannot (a request for
  it is then refused with that reason).

Add a family with one call (at import time of your script, before the engine starts, so
spawned vLLM processes see it too)::

    from cast_vllm.engine.architectures import Architecture, register_architecture
    register_architecture(Architecture(
        hf_names=("Olmo2ForCausalLM",), vllm_module="vllm.model_executor.models.olmo2",
        vllm_class="Olmo2ForCausalLM"))              # layer paths default to "model.layers"

Its decoder layers must return ``(hidden_states, residual)`` whose sum is the residual stream
(vLLM's pre-norm convention; the steering op rewrites ``residual``). In this repository a
built-in family is one entry in ``BUILTIN`` below (``vllm_compat`` derives its list of
subclassed vLLM classes from it) plus a tiny model in ``tests/tiny_models.py`` for its tests.

Nothing here imports vLLM or torch: the CLI and ``vllm_compat`` read this table anywhere.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cast_vllm.errors import CastVllmError

DEFAULT_LAYERS = "model.layers"
WRAPPER_MODULE = "cast_vllm.engine.wrappers"
PROBE_MODULE = "cast_vllm.engine.probe_model"


class ArchitectureError(CastVllmError, ValueError):
    """The architecture is unknown or cannot do what was asked (steering, probing)."""


@dataclass(frozen=True)
class Architecture:
    hf_names: tuple[str, ...]
    vllm_module: str
    vllm_class: str
    hf_layers: str = DEFAULT_LAYERS
    vllm_layers: str = DEFAULT_LAYERS
    steering_gap: str | None = None
    probing_gap: str | None = None

    def __post_init__(self):
        if isinstance(self.hf_names, str):
            object.__setattr__(self, "hf_names", (self.hf_names,))
        if not self.hf_names or not self.vllm_module or not self.vllm_class:
            raise ArchitectureError("an Architecture needs hf_names, vllm_module and vllm_class")

    @property
    def wrapper(self) -> str:
        """The steering architecture name (``hf_overrides={"architectures": [wrapper]}``)."""
        return f"Cast{self.vllm_class}"

    @property
    def probe(self) -> str:
        """The activation-probe architecture name (pooling runner)."""
        return f"CastProbe{self.vllm_class}"

    def base_class(self):
        """The stock vLLM class (imports vLLM)."""
        return getattr(importlib.import_module(self.vllm_module), self.vllm_class)


BUILTIN: tuple[Architecture, ...] = (
    Architecture(("LlamaForCausalLM",), "vllm.model_executor.models.llama", "LlamaForCausalLM"),
    Architecture(("MistralForCausalLM",), "vllm.model_executor.models.mistral", "MistralForCausalLM"),
    Architecture(("Qwen2ForCausalLM",), "vllm.model_executor.models.qwen2", "Qwen2ForCausalLM"),
    Architecture(("Qwen3ForCausalLM",), "vllm.model_executor.models.qwen3", "Qwen3ForCausalLM"),
    # Gemma3Model has no auxiliary hidden-state hook: its probe runs the decoder loop itself
    # (engine/probe_model.py), eagerly and without pipeline parallelism.
    Architecture(("Gemma3ForCausalLM",), "vllm.model_executor.models.gemma3", "Gemma3ForCausalLM"),
)

_REGISTRY: dict[str, Architecture] = {}   # every HF name, wrapper name and probe name -> entry


def register_architecture(arch: Architecture, *, replace: bool = False) -> Architecture:
    """Add ``arch`` to the registry (and to vLLM's ``ModelRegistry`` when the plugin is
    already installed in this process). A name already registered for another entry is
    refused unless ``replace``."""
    names = (*arch.hf_names, arch.wrapper, arch.probe)
    taken = sorted({n for n in names if n in _REGISTRY and _REGISTRY[n] != arch})
    if taken and not replace:
        raise ArchitectureError(f"architecture names already registered: {taken} (pass replace=True)")
    for old in {_REGISTRY[n] for n in taken}:
        for key in [k for k, v in _REGISTRY.items() if v == old]:
            del _REGISTRY[key]
    for name in names:
        _REGISTRY[name] = arch
    from cast_vllm.engine import plugin  # late: the plugin imports this module

    plugin.register_new_architecture(arch)
    return arch


def unregister_architecture(arch: Architecture) -> None:
    """Remove ``arch`` (tests); vLLM's ``ModelRegistry`` keeps names it already has."""
    for key in [k for k, v in _REGISTRY.items() if v == arch]:
        del _REGISTRY[key]


def architectures() -> list[Architecture]:
    """Every registered entry, in registration order."""
    return list(dict.fromkeys(_REGISTRY.values()))


def lookup(names: Iterable[str] | None) -> Architecture | None:
    """The entry for ``config.architectures`` (HF names) or a wrapper / probe name; None if unknown."""
    for name in names or []:
        if name in _REGISTRY:
            return _REGISTRY[name]
    return None


def _supported(kind: str) -> list[str]:
    gap = "steering_gap" if kind == "steering" else "probing_gap"
    return sorted(n for a in architectures() if getattr(a, gap) is None for n in a.hf_names)


def wrapper_for(hf_architectures: list[str]) -> str:
    """The steering wrapper for a checkpoint, or a ValueError listing what is supported."""
    arch = lookup(hf_architectures)
    if arch is None:
        raise ArchitectureError(f"architecture {hf_architectures} is not supported for steering; "
                                f"supported: {_supported('steering')}")
    if arch.steering_gap:
        raise ArchitectureError(f"architecture {hf_architectures} cannot be steered: {arch.steering_gap}")
    return arch.wrapper


def probe_for(hf_architectures: Iterable[str]) -> str:
    """The activation-probe architecture for a checkpoint, or an ArchitectureError."""
    archs = list(hf_architectures or [])
    arch = lookup(archs)
    if arch is None:
        raise ArchitectureError(f"no activation probe for architectures {archs}; supported: "
                                f"{_supported('probing')} (use the HF backend for other models)")
    if arch.probing_gap:
        raise ArchitectureError(f"architectures {archs} cannot be probed in vLLM: {arch.probing_gap} "
                                "(use the HF backend)")
    return arch.probe


def steering_targets() -> dict[str, str]:
    """``ModelRegistry.register_model(name, target)`` pairs of the steering wrappers."""
    return {a.wrapper: f"{WRAPPER_MODULE}:{a.wrapper}" for a in architectures() if a.steering_gap is None}


def probe_targets() -> dict[str, str]:
    """The same for the activation probes."""
    return {a.probe: f"{PROBE_MODULE}:{a.probe}" for a in architectures() if a.probing_gap is None}


def is_steering_architecture(name: str) -> bool:
    arch = _REGISTRY.get(name)
    return arch is not None and arch.steering_gap is None and name == arch.wrapper


def resolve_path(model: Any, path: str) -> Any:
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def decoder_layers(model: Any):
    """The decoder layers (a ModuleList) of an HF or a vLLM model, found by the registry's path.

    vLLM models built from our wrappers and probes carry their entry (``cast_architecture``);
    an HF model is looked up by ``config.architectures``. An unregistered HF model falls back
    to ``model.layers`` (the HF reference reader and hook steering serve any such model)."""
    arch = getattr(type(model), "cast_architecture", None)
    if arch is not None:
        return resolve_path(model, arch.vllm_layers)
    config = getattr(model, "config", None)
    arch = lookup(getattr(config, "architectures", None) or [type(model).__name__])
    path = arch.hf_layers if arch is not None else DEFAULT_LAYERS
    try:
        return resolve_path(model, path)
    except AttributeError:
        raise ArchitectureError(
            f"cannot find the decoder layers of {type(model).__name__} at {path!r}; register its "
            "architecture with its layer path (cast_vllm.engine.architectures.register_architecture)") from None


for _arch in BUILTIN:
    for _name in (*_arch.hf_names, _arch.wrapper, _arch.probe):
        _REGISTRY[_name] = _arch
