"""Per-step token -> slot indexing, run by the V1 model runner just before the forward pass.

For every scheduled token: its request's steering, its absolute position (computed tokens +
offset, so chunked prefill and recomputation after preemption agree), and the position policy
decide the slot row it reads. Unsteered tokens and CUDA-graph padding read row 0.
"""

from __future__ import annotations

from cast_vllm.engine.admission import RESOLVED_KEY
from cast_vllm.engine.slot_manager import SlotManager
from cast_vllm.engine.slot_table import SlotTable
from cast_vllm.spec import PHASE_GENERATED, PHASE_LAST_PROMPT, PHASE_PROMPT, phase_masks


class StepIndexer:
    def __init__(self, table: SlotTable, manager: SlotManager):
        self.table = table
        self.manager = manager
        self._requests: dict[str, tuple[dict, dict[int, tuple[int, ...]]] | None] = {}

    def _steering_of(self, runner, req_id: str):
        if req_id not in self._requests:
            if len(self._requests) > 2 * len(runner.requests) + 64:  # forget finished requests
                self._requests = {k: v for k, v in self._requests.items() if k in runner.requests}
            params = runner.requests[req_id].sampling_params
            resolved = (params.extra_args or {}).get(RESOLVED_KEY) if params is not None else None
            self._requests[req_id] = (
                (resolved, phase_masks([c["positions"] for c in resolved["components"]])) if resolved else None)
        return self._requests[req_id]

    def prepare(self, runner) -> None:
        batch = runner.input_batch
        num_reqs = batch.num_reqs
        qsl = runner.query_start_loc.np
        host = self.table.host_token_slots()
        self.manager.begin_step()
        num_tokens = 0
        for i, req_id in enumerate(batch.req_ids[:num_reqs]):
            info = self._steering_of(runner, req_id)
            if info is None:
                continue
            if num_tokens == 0:
                num_tokens = int(qsl[num_reqs])
                host[:num_tokens] = 0
            resolved, masks = info
            start, end = int(qsl[i]), int(qsl[i + 1])
            first = int(batch.num_computed_tokens_cpu[i])
            prompt_len = runner.requests[req_id].num_prompt_tokens
            # Tokens [start, end) hold positions [first, first + end - start); split them by phase.
            cut_last = start + min(max(prompt_len - 1 - first, 0), end - start)
            cut_gen = start + min(max(prompt_len - first, 0), end - start)
            for phase, lo, hi in ((PHASE_PROMPT, start, cut_last), (PHASE_LAST_PROMPT, cut_last, cut_gen),
                                  (PHASE_GENERATED, cut_gen, end)):
                if hi > lo and phase in masks:
                    host[lo:hi] = self.manager.slot_for(resolved, masks[phase])
        self.table.publish_token_slots(num_tokens)
