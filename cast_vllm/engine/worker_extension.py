"""Methods of every vLLM worker, callable with ``collective_rpc``.

The plugin adds them to vLLM's ``WorkerBase`` in every process (``hooks._patch_worker``), so
every worker answers the engine core's RPCs, whatever the launch command. ``worker_extension_cls``
is therefore not needed; ``SteeringWorkerExtension`` stays, empty, for configurations that still
name it (vLLM refuses an extension that repeats a worker method).
"""

from __future__ import annotations


def _steering_state(worker):
    return getattr(worker.model_runner.get_model(), "cast_steering", None)


class SteeringWorkerMethods:
    def cast_steering_stats(self) -> dict:
        """Slot-table counters of this worker (rows loaded, rows evicted, slots in use, vectors)."""
        state = _steering_state(self)
        if state is None:
            return {}
        m = state.manager
        return {"slots": state.table.num_slots, "slots_in_use": m.slots_in_use, "loads": m.loads,
                "evictions": m.evictions, "unloadable": state.indexer.unloadable,
                "vectors_received": m.vectors.received, "vectors_from_paths": m.vectors.from_paths}

    def cast_put_vector(self, content_hash: str, data: bytes) -> bool:
        """Keep a vector the engine core ships (``worker_vectors.py``); False for a model that is
        not a steering wrapper. Raises ``VectorFileError`` when the bytes do not hold the hash."""
        state = _steering_state(self)
        if state is None:
            return False
        state.manager.vectors.put(content_hash, data)
        return True


class SteeringWorkerExtension:
    """Empty: accepted as ``worker_extension_cls`` for older launch commands (module doc)."""
