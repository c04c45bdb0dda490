"""``SteeredLLM``: a ``vllm.LLM`` whose requests carry their own steering (DESIGN.md)."""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref

from vllm import LLM
from vllm.outputs import RequestOutput

from cast_vllm import envs
from cast_vllm.engine.architectures import wrapper_for
from cast_vllm.engine.settings import DEFAULT_MAX_SCALE, SteeringSettings
from cast_vllm.receipt import SteeringReceipt
from cast_vllm.store import VectorStore
from cast_vllm.vectors import SteeringVector

logger = logging.getLogger(__name__)
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30


class SteeredLLM(LLM):
    """vLLM with the steering wrapper of the checkpoint's architecture.

    Vectors come from ``vector_dir`` (by file stem) or from ``register_vector``; registered
    vectors live in a private directory searched first, so they shadow files of the same name.
    Every ``RequestOutput`` it returns has ``.steering``: a ``SteeringReceipt`` or None.
    """

    def __init__(self, model: str, vector_dir: str | None = None, *,
                 max_steering_vectors: int | None = None,
                 max_steering_scale: float = DEFAULT_MAX_SCALE, **kwargs):
        from transformers import AutoConfig

        from cast_vllm.engine.plugin import register

        register(strict=True)  # UnsupportedVLLMError here, not a half-patched engine
        model = str(model)
        if max_steering_vectors is not None and max_steering_vectors < 1:
            raise ValueError(f"max_steering_vectors must be >= 1, got {max_steering_vectors}")
        hf_config = AutoConfig.from_pretrained(model, trust_remote_code=kwargs.get("trust_remote_code", False))
        wrapper = wrapper_for(getattr(hf_config, "architectures", None) or [])
        self._registered_dir = tempfile.mkdtemp(prefix="cast-vllm-registered-")
        weakref.finalize(self, shutil.rmtree, self._registered_dir, True)
        dirs = [self._registered_dir] + ([str(vector_dir)] if vector_dir else [])
        self.vector_store = VectorStore(dirs)
        settings = SteeringSettings(tuple(str(d) for d in self.vector_store.dirs),
                                    max_steering_vectors, float(max_steering_scale))
        kwargs["hf_overrides"] = {**(kwargs.get("hf_overrides") or {}), "architectures": [wrapper],
                                  **settings.to_overrides()}
        if _cpu_only() and "kv_cache_memory_bytes" not in kwargs and not envs.cpu_kv_cache_space_set():
            kwargs["kv_cache_memory_bytes"] = DEFAULT_CPU_KV_CACHE_BYTES
        super().__init__(model=model, **kwargs)
        self.llm_engine.input_processor._cast_receipts = {}  # request id -> ResolvedSteering (hooks.py)
        cfg = self.llm_engine.model_config
        self.hidden_size = cfg.get_hidden_size()
        self.num_layers = cfg.get_total_num_hidden_layers()   # all stages: vectors name global layers
        logger.info("SteeredLLM: %s as %s, vectors from %s", model, wrapper, [str(d) for d in self.vector_store.dirs])

    def _run_engine(self, *args, **kwargs):
        """vLLM's loop, then each steered ``RequestOutput`` gets ``.steering``: its receipt."""
        receipts = self.llm_engine.input_processor._cast_receipts
        outputs = super()._run_engine(*args, **kwargs)
        for out in outputs:
            resolved = receipts.pop(out.request_id, None)
            if isinstance(out, RequestOutput):
                out.steering = None if resolved is None else SteeringReceipt.build(
                    resolved, len(out.prompt_token_ids or ()), [len(c.token_ids) for c in out.outputs])
        return outputs

    def register_vector(self, name: str, vector: SteeringVector) -> None:
        """Make ``vector`` available under ``name`` to every worker, from the next request on."""
        vector.check_against_model(self.hidden_size, self.num_layers, f"vector {name!r}")
        self.vector_store.register(name, vector)

    def list_vectors(self) -> list[str]:
        return self.vector_store.names()

    def steering_stats(self) -> list[dict]:
        """Per-worker slot-table counters: slots, slots_in_use, loads, evictions."""
        return self.collective_rpc("cast_steering_stats")


def _cpu_only() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()
