"""Methods added to every vLLM worker (``worker_extension_cls``), callable with ``collective_rpc``."""

from __future__ import annotations


class SteeringWorkerExtension:
    def cast_steering_stats(self) -> dict:
        """Slot-table counters of this worker (rows loaded, rows evicted, slots in use)."""
        state = getattr(self.model_runner.get_model(), "cast_steering", None)
        if state is None:
            return {}
        m = state.manager
        return {"slots": state.table.num_slots, "slots_in_use": m.slots_in_use, "loads": m.loads,
                "evictions": m.evictions, "unloadable": state.indexer.unloadable}
