"""Slot-aware admission in the engine-core scheduler.

vLLM asks ``_handle_blocked_waiting_request`` about every waiting request it is about to
schedule, in queue order, from both waiting queues; a ``False`` makes it skip the request for
this step and keep its place. The budget answers there, so it sees exactly the requests vLLM
really schedules (grammar still compiling, LoRA limits, remote KV and preemption included):

- rows in use are counted from ``scheduler.running`` as it grows during the step, so a request
  that vLLM skipped for another reason never holds rows;
- a steered request whose new rows would exceed ``max_steering_vectors`` waits, and once one
  waits every later steered request waits too (arrival order: no starvation by traffic on
  vectors already loaded); unsteered requests pass;
- a request whose vector blob cannot be loaded (and cannot be rebuilt from its source file) is
  finished with an error on its own, before any worker sees it.
"""

from __future__ import annotations

import logging

from cast_vllm.engine.resolved import ResolvedSteering, resolved_of
from cast_vllm.store import BlobCache
from cast_vllm.vectors import VectorFileError

logger = logging.getLogger(__name__)


class SlotBudget:
    def __init__(self, max_slots: int):
        self.max_slots = max_slots
        self.waits = 0              # requests held back for a step, summed over steps
        self.failed = 0             # requests finished with an error (unloadable vector)
        self.blobs = BlobCache(capacity=64)
        self._counted = 0           # leading entries of scheduler.running already in _used
        self._used: dict[tuple, int] = {}   # budget key -> rows (equal keys share rows)
        self._holding = False

    def begin_step(self) -> None:
        self._counted, self._used, self._holding = 0, {}, False

    def _count_running(self, running: list) -> None:
        for request in running[self._counted:]:
            r = resolved_of(request.sampling_params)
            if r is not None:
                self._used[r.budget_key] = r.slots
        self._counted = len(running)

    def admit(self, scheduler, request) -> bool:
        """False: vLLM skips the request this step (it keeps its place in the queue)."""
        r = resolved_of(request.sampling_params)
        if r is None:
            return True
        if not self._loadable(r, request.request_id):
            scheduler.grammar_compile_error_reqs.add(request.request_id)  # vLLM's "finish with error" set
            return False
        self._count_running(scheduler.running)
        if r.budget_key in self._used and not self._holding:
            return True
        if self._holding or sum(self._used.values()) + r.slots > self.max_slots:
            self._holding = True
            self.waits += 1
            return False
        return True

    def _loadable(self, r: ResolvedSteering, request_id: str) -> bool:
        try:
            for c in r.components:
                self.blobs.get(c.content_hash, c.blob, c.source)
        except VectorFileError as exc:
            self.failed += 1
            logger.error("request %s fails: steering vector cannot be loaded: %s", request_id, exc)
            return False
        return True
