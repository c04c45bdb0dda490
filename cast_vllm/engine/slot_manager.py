"""Which steering configuration occupies which slot row (worker side).

A row holds one set of active components with their scales relative to the leading one
(``ResolvedSteering.row_of``); the leading scale travels with each token. So a request whose
components cover different positions needs one row per distinct set of active components, and
requests that differ only in overall scale share rows. Rows are loaded on demand and kept LRU;
a row used by a token of the current step is never evicted. The scheduler hook keeps the rows
needed by running requests within the slot budget, so a step always fits.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from cast_vllm.engine.resolved import ResolvedSteering
from cast_vllm.engine.slot_table import SlotTable
from cast_vllm.engine.worker_vectors import WorkerVectors


class SlotManager:
    def __init__(self, table: SlotTable):
        self.table = table
        self.vectors = WorkerVectors(capacity=max(64, 4 * table.num_slots))
        self._slots: OrderedDict[tuple, int] = OrderedDict()  # key -> slot, least recent first
        self._free = list(range(table.num_slots, 0, -1))
        self._pinned: set[int] = set()
        self.loads = 0
        self.evictions = 0

    @property
    def slots_in_use(self) -> int:
        return len(self._slots)

    def begin_step(self) -> None:
        self._pinned.clear()

    def slot_for(self, resolved: ResolvedSteering, active: tuple[int, ...]) -> tuple[int, float]:
        """(row, token scale) of ``resolved`` restricted to components ``active``; loads the row
        if needed.

        Raises ``VectorFileError`` when a vector can be neither loaded nor rebuilt (the caller
        leaves that request's tokens unsteered rather than stopping the engine).
        """
        key, scale = resolved.row_of(active)
        slot = self._slots.get(key)
        if slot is not None:
            self._slots.move_to_end(key)
        else:
            rows, modes = self._rows(resolved, key)
            slot = self._take_slot()
            self.table.write_slot(slot, rows, modes)
            self._slots[key] = slot
            self.loads += 1
        self._pinned.add(slot)
        return slot, scale

    def _take_slot(self) -> int:
        if self._free:
            return self._free.pop()
        for key, slot in self._slots.items():  # least recently used first
            if slot not in self._pinned:
                del self._slots[key]
                self.evictions += 1
                return slot
        raise RuntimeError(
            f"all {self.table.num_slots} steering slots are used by this step's tokens; the scheduler "
            "hook should have held requests back (raise max_steering_vectors)")

    def _rows(self, resolved: ResolvedSteering, key: tuple):
        """The row of ``key`` (``row_of``): relative scales; a lone component's row is its vector."""
        by_hash = {c.content_hash: c for c in resolved.components}
        rows: dict[int, torch.Tensor] = {}
        modes: dict[int, str] = {}
        for content_hash, relative, layers, mode in key:
            comp = by_hash[content_hash]
            vec = self.vectors.get(comp.content_hash, comp.blob, comp.source)
            for layer in layers:
                delta = vec.directions[layer] if relative == 1.0 else relative * vec.directions[layer]
                rows[layer] = rows[layer] + delta if layer in rows else delta
                modes[layer] = mode
        return rows, modes
