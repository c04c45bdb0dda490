"""Slot-aware admission in the engine-core scheduler.

When waiting requests need more distinct steering rows than the slot table has, the extra
ones stay in the waiting queue (in order) and run when running requests finish: no request
fails and no row in use is evicted. Same idea as vLLM's ``max_loras`` check.
"""

from __future__ import annotations

import logging

from cast_vllm.engine.admission import RESOLVED_KEY

logger = logging.getLogger(__name__)


def _resolved(request):
    params = request.sampling_params
    return (params.extra_args or {}).get(RESOLVED_KEY) if params is not None else None


class SlotBudget:
    """Counts rows needed by running requests and holds back waiting ones that do not fit."""

    def __init__(self, max_slots: int):
        self.max_slots = max_slots
        self.waits = 0          # requests held back for a step, summed over steps

    def hold_back(self, scheduler) -> list:
        used: dict[str, int] = {}
        for request in scheduler.running:
            r = _resolved(request)
            if r:
                used[r["key"]] = r["slots"]
        total = sum(used.values())
        seats = scheduler.max_num_running_reqs - len(scheduler.running)
        held, admitted = [], 0
        for request in scheduler.waiting:
            if admitted >= seats:
                break
            r = _resolved(request)
            if r and r["key"] not in used:
                if total + r["slots"] > self.max_slots:
                    held.append(request)
                    continue
                used[r["key"]] = r["slots"]
                total += r["slots"]
            admitted += 1
        if held:
            scheduler.waiting.remove_requests(held)
            self.waits += len(held)
            logger.debug("holding %d steered requests until a steering slot frees", len(held))
        return held
