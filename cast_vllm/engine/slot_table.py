"""The slot table: persistent per-layer buffers the steered layers read every forward pass.

Like vLLM's LoRA punica buffers: allocated once at model construction, updated only in place
(outside the compiled region), so torch.compile (traced once) and CUDA graphs (fixed
addresses) always read current values. Row 0 of every layer is zero: "not steered".

  rows         [num_layers, slots + 1, hidden]  float32, unscaled directions
  modes        [num_layers, slots + 1]          int32, ``cast_vllm.kernels.modes.MODE_IDS``
  token_slots  [max_tokens]                     int32, the row each scheduled token reads
  token_scales [max_tokens]                     float32, the scale each scheduled token applies

The scale lives with the token, not in the row, so one vector at any number of scales (an
alpha sweep in one batch, per-request continuous scales) takes one row.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn
from vllm.model_executor.models.utils import PPMissingLayer

from cast_vllm.kernels.modes import MODE_IDS, MODE_NORM_PRESERVING
from cast_vllm.kernels.steer_residual import steering_fn

logger = logging.getLogger(__name__)
STEP_FULL, STEP_ADD, STEP_SKIP = "full", "add", "skip"  # eager paths of a step (SteeredLayerMixin)


class SteeredLayerMixin:
    """Mixed into each decoder layer's class: run the layer, then steer its residual output.

    Compiled graphs always contain the full op (traced once, no Python state read). An eager
    CPU forward, where the reference op's ~18 small tensor ops per layer cost ~8% of a step,
    takes the step's shortcut instead: nothing when no token is steered, a gather-add when
    no steered token uses ``norm_preserving`` (the same numbers as the full op).
    """

    def forward(self, positions, hidden_states, residual, *args, **kwargs):
        hidden_states, residual = super().forward(positions, hidden_states, residual, *args, **kwargs)
        path = STEP_FULL if torch.compiler.is_compiling() else self.cast_table.eager_path
        if path == STEP_ADD:
            n = residual.shape[0]
            d = self.cast_rows[self.cast_token_slots[:n].long()] * self.cast_token_scales[:n, None]
            residual = (residual.float() + d).to(residual.dtype)
        elif path == STEP_FULL:
            residual = self.cast_steer(hidden_states, residual, self.cast_rows, self.cast_modes,
                                       self.cast_token_slots, self.cast_token_scales)
        return hidden_states, residual


_steered_classes: dict[type, type] = {}


def _steered_class(cls: type) -> type:
    if cls not in _steered_classes:
        _steered_classes[cls] = type(f"Steered{cls.__name__}", (SteeredLayerMixin, cls), {})
    return _steered_classes[cls]


class SlotTable:
    def __init__(self, layers: nn.ModuleList, num_slots: int, hidden_size: int, max_tokens: int,
                 device: torch.device):
        self.num_layers = len(layers)
        self.num_slots = num_slots
        self.hidden_size = hidden_size
        self.max_tokens = max_tokens
        self.rows = torch.zeros(self.num_layers, num_slots + 1, hidden_size, dtype=torch.float32, device=device)
        self.modes = torch.zeros(self.num_layers, num_slots + 1, dtype=torch.int32, device=device)
        self.token_slots = torch.zeros(max_tokens, dtype=torch.int32, device=device)
        self.token_scales = torch.zeros(max_tokens, dtype=torch.float32, device=device)
        self._host_slots = np.zeros(max_tokens, dtype=np.int32)
        self._host_scales = np.zeros(max_tokens, dtype=np.float32)
        self._dirty_tokens = 0  # leading entries of token_slots that may be non-zero
        # Eager shortcuts are for the CPU reference only: the CUDA kernel is already one launch.
        self._eager_shortcuts = self.rows.device.type == "cpu"
        self._host_norm_slots = np.zeros(num_slots + 1, dtype=bool)  # slot has a norm_preserving layer
        self.eager_path = STEP_FULL
        # With pipeline parallelism a rank holds placeholders for the other ranks' layers.
        self.layers = [(i, layer) for i, layer in enumerate(layers) if not isinstance(layer, PPMissingLayer)]
        steer = steering_fn(self.rows.device)
        for i, layer in self.layers:
            # Swapping the class (not wrapping the module) keeps parameter names for the weight loader.
            layer.__class__ = _steered_class(type(layer))
            layer.register_buffer("cast_rows", self.rows[i], persistent=False)
            layer.register_buffer("cast_modes", self.modes[i], persistent=False)
            layer.register_buffer("cast_token_slots", self.token_slots, persistent=False)
            layer.register_buffer("cast_token_scales", self.token_scales, persistent=False)
            object.__setattr__(layer, "cast_steer", steer)
            object.__setattr__(layer, "cast_table", self)
        nbytes = sum(t.numel() * t.element_size() for t in (self.rows, self.modes, self.token_slots,
                                                            self.token_scales))
        logger.info("steering slot table: %d layers x %d slots x %d hidden, %d tokens: %.2f MiB on %s",
                    self.num_layers, num_slots, hidden_size, max_tokens, nbytes / 2**20, device)

    def write_slot(self, slot: int, rows: dict[int, torch.Tensor], modes: dict[int, str]) -> None:
        """Fill one slot in place: every layer of the row is rewritten (absent layers -> zero, add)."""
        assert 1 <= slot <= self.num_slots
        full = torch.zeros(self.num_layers, self.hidden_size, dtype=torch.float32)
        mode_ids = torch.zeros(self.num_layers, dtype=torch.int32)
        for layer, row in rows.items():
            full[layer] = row
            mode_ids[layer] = MODE_IDS[modes[layer]]
        for i, layer in self.layers:  # through each layer's own buffer, robust to module moves
            layer.cast_rows[slot].copy_(full[i], non_blocking=True)
            layer.cast_modes[slot].copy_(mode_ids[i], non_blocking=True)
        self._host_norm_slots[slot] = bool((mode_ids == MODE_NORM_PRESERVING).any())

    def host_token_slots(self) -> np.ndarray:
        return self._host_slots

    def host_token_scales(self) -> np.ndarray:
        """Read only where ``host_token_slots`` is non-zero (row 0 is zero at any scale)."""
        return self._host_scales

    def publish_token_slots(self, num_tokens: int) -> None:
        """Copy the first ``num_tokens`` host slots and scales to the device; slots past them become 0."""
        if num_tokens > self.max_tokens:
            raise RuntimeError(f"{num_tokens} tokens exceed the steering index buffer ({self.max_tokens})")
        n = max(num_tokens, self._dirty_tokens)
        used = self._host_slots[:num_tokens]
        active = bool(used.any())
        if self._eager_shortcuts:
            self.eager_path = (STEP_SKIP if not active else
                               STEP_FULL if self._host_norm_slots[used].any() else STEP_ADD)
        if n == 0:
            return
        self._host_slots[num_tokens:n] = 0
        slots, scales = torch.from_numpy(self._host_slots[:n]), torch.from_numpy(self._host_scales[:n])
        for _, layer in {id(layer.cast_token_slots): (i, layer) for i, layer in self.layers}.values():
            layer.cast_token_slots[:n].copy_(slots, non_blocking=True)
            layer.cast_token_scales[:n].copy_(scales, non_blocking=True)
        self._dirty_tokens = num_tokens if active else 0
