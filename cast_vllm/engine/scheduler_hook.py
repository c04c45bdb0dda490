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
  finished with an error on its own, before any worker sees it;
- before the first request using a vector is scheduled, the vector is shipped to every worker
  (``scheduler._cast_ship``, an RPC the engine core sets up; ``worker_vectors.py``), once per
  engine. A scheduler without it (driven by hand) ships nothing: workers then read the paths.
"""

from __future__ import annotations

import logging
from typing import Callable

from cast_vllm.engine.resolved import ResolvedSteering, resolved_of
from cast_vllm.store import BlobCache

logger = logging.getLogger(__name__)


#: ``ship(content_hash, safetensors_bytes)``: hand a vector to every worker
Shipper = Callable[[str, bytes], object]


class SlotBudget:
    def __init__(self, max_slots: int):
        self.max_slots = max_slots
        self.shipped: set[str] = set()      # content hashes every worker holds
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
        if not self._loadable(r, request.request_id, getattr(scheduler, "_cast_ship", None)):
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

    def _loadable(self, r: ResolvedSteering, request_id: str, ship: Shipper | None) -> bool:
        """Load each vector and ship it to the workers the first time; False when either fails."""
        try:
            for c in r.components:
                vector = self.blobs.get(c.content_hash, c.blob, c.source)
                if ship is not None and c.content_hash not in self.shipped:
                    ship(c.content_hash, vector.to_safetensors_bytes())
                    self.shipped.add(c.content_hash)
        except Exception as exc:   # VectorFileError, or a worker that refused the bytes
            self.failed += 1
            logger.error("request %s fails: steering vector %s cannot be loaded or shipped: %s", request_id,
                         c.content_hash[:12], exc)
            return False
        return True
