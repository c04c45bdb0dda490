"""The wrapper classes: stock vLLM model + steering state (slot table, slot manager, indexer)."""

from __future__ import annotations

import logging

from cast_vllm.engine.architectures import BASES, base_class
from cast_vllm.engine.runner_hook import StepIndexer
from cast_vllm.engine.settings import SteeringSettings
from cast_vllm.engine.slot_manager import SlotManager
from cast_vllm.engine.slot_table import SlotTable

logger = logging.getLogger(__name__)


class SteeringState:
    """Everything the worker keeps for steering; reached from the runner via ``model.cast_steering``."""

    def __init__(self, model, vllm_config):
        settings = SteeringSettings.from_hf_config(vllm_config.model_config.hf_config)
        layers = model.model.layers
        sched = vllm_config.scheduler_config
        capture = getattr(vllm_config.compilation_config, "max_cudagraph_capture_size", None) or 0
        max_tokens = max(sched.max_num_batched_tokens, capture, sched.max_num_seqs)
        device = next(model.parameters()).device
        self.table = SlotTable(layers, settings.max_steering_vectors,
                               vllm_config.model_config.get_hidden_size(), max_tokens, device)
        self.manager = SlotManager(self.table)
        self.indexer = StepIndexer(self.table, self.manager)


def _make_wrapper(name: str):
    base = base_class(name)

    def __init__(self, *, vllm_config, prefix: str = "", **kwargs):
        base.__init__(self, vllm_config=vllm_config, prefix=prefix, **kwargs)
        self.cast_steering = SteeringState(self, vllm_config)

    def get_model_state_cls(self):  # V2 GPU runner only
        from cast_vllm.engine.model_state_v2 import SteeringModelState

        return SteeringModelState

    return type(name, (base,), {"__init__": __init__, "get_model_state_cls": get_model_state_cls,
                                "__module__": __name__,
                                "__doc__": f"{base.__name__} with per-request steering."})


for _name in BASES:
    try:
        globals()[_name] = _make_wrapper(_name)
    except (ImportError, AttributeError) as exc:  # a vLLM build without this architecture
        logger.debug("steering wrapper %s unavailable: %s", _name, exc)
