"""The steering wrapper classes: stock vLLM model + steering state (slot table, slot manager, indexer).

``Cast<vllm_class>`` for every entry of the architecture registry, built on first attribute
access (module ``__getattr__``), which is how vLLM's lazy registry resolves
``"cast_vllm.engine.wrappers:CastLlamaForCausalLM"``; architectures registered later work the same way.
"""

from __future__ import annotations

from cast_vllm.engine.architectures import Architecture, decoder_layers, lookup
from cast_vllm.engine.runner_hook import StepIndexer
from cast_vllm.engine.settings import SteeringSettings
from cast_vllm.engine.slot_manager import SlotManager
from cast_vllm.engine.slot_table import SlotTable


class SteeringState:
    """Everything the worker keeps for steering; reached from the runner via ``model.cast_steering``."""

    def __init__(self, model, vllm_config):
        settings = SteeringSettings.of_engine(vllm_config)
        layers = decoder_layers(model)
        sched = vllm_config.scheduler_config
        capture = getattr(vllm_config.compilation_config, "max_cudagraph_capture_size", None) or 0
        max_tokens = max(sched.max_num_batched_tokens, capture, sched.max_num_seqs)
        device = next(model.parameters()).device
        self.table = SlotTable(layers, settings.max_steering_vectors,
                               vllm_config.model_config.get_hidden_size(), max_tokens, device)
        self.manager = SlotManager(self.table)
        self.indexer = StepIndexer(self.table, self.manager)


def _make_wrapper(arch: Architecture):
    base = arch.base_class()

    def __init__(self, *, vllm_config, prefix: str = "", **kwargs):
        base.__init__(self, vllm_config=vllm_config, prefix=prefix, **kwargs)
        self.cast_steering = SteeringState(self, vllm_config)

    def get_model_state_cls(self):  # V2 GPU runner only
        from cast_vllm.engine.model_state_v2 import SteeringModelState

        return SteeringModelState

    return type(arch.wrapper, (base,), {"__init__": __init__, "get_model_state_cls": get_model_state_cls,
                                        "cast_architecture": arch, "__module__": __name__,
                                        "__qualname__": arch.wrapper,
                                        "__doc__": f"{base.__name__} with per-request steering."})


_CLASSES: dict[str, type] = {}


def __getattr__(name: str):
    arch = lookup([name])
    if arch is None or name != arch.wrapper or arch.steering_gap:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _CLASSES:
        _CLASSES[name] = _make_wrapper(arch)
    return _CLASSES[name]
