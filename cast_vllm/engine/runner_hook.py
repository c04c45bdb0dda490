"""Per-step token -> slot indexing, run just before each forward pass.

For every scheduled token: its request's steering, its absolute position (computed tokens +
offset, so chunked prefill and recomputation after preemption agree), and the position policy
decide the slot row it reads. Unsteered tokens and CUDA-graph padding read row 0.

Two adapters feed the same indexer: the V1 model runner (CPU and GPU; patched
``_model_forward``) and the V2 GPU runner's model-state hook (``model_state_v2.py``).
"""

from __future__ import annotations

import logging

from cast_vllm.engine.resolved import resolved_of
from cast_vllm.engine.slot_manager import SlotManager
from cast_vllm.engine.slot_table import SlotTable
from cast_vllm.spec import PHASE_GENERATED, PHASE_LAST_PROMPT, PHASE_PROMPT
from cast_vllm.vectors import VectorFileError

logger = logging.getLogger(__name__)


def request_steering(sampling_params, prompt_len: int):
    """What the indexer needs of one request: (resolved steering, phase -> active components, prompt length)."""
    resolved = resolved_of(sampling_params)
    if resolved is None:
        return None
    return resolved, resolved.phase_masks, prompt_len


class StepIndexer:
    def __init__(self, table: SlotTable, manager: SlotManager):
        self.table = table
        self.manager = manager
        self.unloadable = 0     # requests left unsteered because a vector vanished after admission
        self._v1_requests: dict[str, tuple | None] = {}

    def index(self, req_ids, query_start_loc, num_computed, steering_of) -> None:
        """Fill the token -> slot index for one step; ``steering_of(req_id)`` gives request_steering()."""
        host = self.table.host_token_slots()
        scales = self.table.host_token_scales()
        self.manager.begin_step()
        num_tokens = 0
        num_reqs = len(req_ids)
        for i, req_id in enumerate(req_ids):
            info = steering_of(req_id)
            if info is None:
                continue
            if num_tokens == 0:
                num_tokens = int(query_start_loc[num_reqs])
                host[:num_tokens] = 0
            resolved, masks, prompt_len = info
            start, end = int(query_start_loc[i]), int(query_start_loc[i + 1])
            first = int(num_computed[i])
            # Tokens [start, end) hold positions [first, first + end - start); split them by phase.
            cut_last = start + min(max(prompt_len - 1 - first, 0), end - start)
            cut_gen = start + min(max(prompt_len - first, 0), end - start)
            try:
                for phase, lo, hi in ((PHASE_PROMPT, start, cut_last), (PHASE_LAST_PROMPT, cut_last, cut_gen),
                                      (PHASE_GENERATED, cut_gen, end)):
                    if hi > lo and phase in masks:
                        host[lo:hi], scales[lo:hi] = self.manager.slot_for(resolved, masks[phase])
            except VectorFileError as exc:
                # The engine core verified the vector a moment ago; it vanished since (both blob
                # and source). Failing here would stop the engine for every request.
                host[start:end] = 0
                self.unloadable += 1
                logger.error("request %s runs unsteered: its steering vector was removed after admission: %s",
                             req_id, exc)
        self.table.publish_token_slots(num_tokens)

    def prepare_v1(self, runner) -> None:
        """Adapter for the V1 model runner (``GPUModelRunner`` and its ``CPUModelRunner`` subclass)."""
        batch = runner.input_batch
        cache = self._v1_requests
        if len(cache) > 2 * len(runner.requests) + 64:  # forget finished requests
            self._v1_requests = cache = {k: v for k, v in cache.items() if k in runner.requests}

        def steering_of(req_id):
            if req_id not in cache:
                state = runner.requests[req_id]
                cache[req_id] = request_steering(state.sampling_params, state.num_prompt_tokens)
            return cache[req_id]

        self.index(batch.req_ids[: batch.num_reqs], runner.query_start_loc.np, batch.num_computed_tokens_cpu,
                   steering_of)
