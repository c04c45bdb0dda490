"""The steering op as the compiled graph sees it.

On CUDA the fused Triton kernel runs as the custom op ``torch.ops.cast_vllm.steer_residual``
with a fake implementation, so torch.compile traces it once and CUDA graphs capture it. On
the CPU the torch reference of the same kernel is traced inline (Inductor fuses it).
"""

from __future__ import annotations

import torch

from cast_vllm.kernels.steer_residual import steer_residual_reference

_lib = None


def _register_cuda_op() -> None:
    global _lib
    from torch.library import Library
    from vllm.utils.torch_utils import direct_register_custom_op

    from cast_vllm.kernels.steer_residual import steer_residual_triton

    def fake(hidden: torch.Tensor, residual: torch.Tensor, table: torch.Tensor, modes: torch.Tensor,
             token_slots: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(residual)

    _lib = Library("cast_vllm", "FRAGMENT")
    direct_register_custom_op("steer_residual", steer_residual_triton, mutates_args=[],
                              fake_impl=fake, target_lib=_lib, dispatch_key="CUDA")


def steering_fn(device: torch.device):
    """The function a steered layer calls on this device."""
    if device.type == "cuda":
        if _lib is None:
            _register_cuda_op()
        return torch.ops.cast_vllm.steer_residual
    return steer_residual_reference
