"""Fused activation steering on vLLM's (hidden, residual) pair.

A vLLM decoder layer returns ``(hidden, residual)`` and the true residual stream is
``h = hidden + residual``. Steering rewrites only the residual half so the next layer's
fused add + RMSNorm sees the steered stream. Each token looks up one row of a per-layer
table through ``token_slots`` and its own scale in ``token_scales``; row 0 is all zeros and
means "unsteered". The table holds unscaled directions, so one vector at many scales (an alpha
sweep, continuous scales per request) shares one row.

Modes (``modes[slot]``), with ``d = token_scales[t] * table[slot]`` and everything computed in
float32:

- 0, add:             ``new_residual = residual + d``
- 1, norm_preserving: ``hn = h + d``, ``new_residual = hn * ||h|| / max(||hn||, eps) - hidden``

A token whose ``d`` is all zeros (slot 0, or scale 0) gets ``residual`` back bitwise, in
either mode, so unsteered requests in a mixed batch match an engine without steering.

Everything about the op is here:

- ``steer_residual_reference``: pure torch; Dynamo traces it inline on the CPU inside vLLM's
  compiled model (Inductor fuses it);
- ``steer_residual_triton``: one launch for the whole batch, one program per token;
- ``torch.ops.cast_vllm.steer_residual``: the Triton kernel as a custom op with a fake
  implementation, so torch.compile traces it once and CUDA graphs capture it (registered on
  first use, through vLLM's ``direct_register_custom_op``);
- ``steering_fn(device)``: the one dispatcher, what a steered layer calls on that device.

The mode ids come from ``cast_vllm.kernels.modes`` (their one definition).
"""

import torch
from torch import Tensor

from cast_vllm.kernels.modes import MODE_ADD, MODE_NORM_PRESERVING

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: steering_fn() returns the reference.
    triton = None

__all__ = ["EPS", "MODE_ADD", "MODE_NORM_PRESERVING", "steer_residual_reference", "steer_residual_triton",
           "steering_fn"]

EPS = 1e-6


def steer_residual_reference(
    hidden: Tensor, residual: Tensor, table: Tensor, modes: Tensor, token_slots: Tensor, token_scales: Tensor
) -> Tensor:
    """Both modes are computed for every token and selected with ``where``: the graph is
    traced once and replayed, so it cannot branch on tensor values."""
    num_tokens = residual.shape[0]
    slots = token_slots[:num_tokens].long()
    d = table[slots] * token_scales[:num_tokens, None]
    r = residual.float()
    x = hidden.float()
    h = x + r
    hn = h + d
    scale = torch.linalg.vector_norm(h, dim=-1, keepdim=True) / torch.linalg.vector_norm(
        hn, dim=-1, keepdim=True
    ).clamp_min(EPS)
    norm_preserving = (modes[slots] == MODE_NORM_PRESERVING).unsqueeze(-1)
    steered = torch.where(norm_preserving, hn * scale - x, r + d).to(residual.dtype)
    # r + 0.0 turns -0.0 into +0.0, so zero rows select the input rather than rely on it.
    is_steered = (d != 0).any(dim=-1, keepdim=True)
    return torch.where(is_steered, steered, residual)


if triton is not None:

    @triton.jit
    def _steer_residual_kernel(
        hidden_ptr,
        residual_ptr,
        table_ptr,
        modes_ptr,
        slots_ptr,
        scales_ptr,
        out_ptr,
        stride_hidden,
        stride_residual,
        stride_table,
        stride_out,
        H,
        eps,
        BLOCK_H: tl.constexpr,
        NORM_PRESERVING: tl.constexpr,  # MODE_NORM_PRESERVING (kernels read no Python globals)
    ):
        # int64 offsets: T * row stride overflows int32 for long batches of wide rows.
        token = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_H)
        mask = cols < H

        slot = tl.load(slots_ptr + token).to(tl.int64)
        mode = tl.load(modes_ptr + slot)
        token_scale = tl.load(scales_ptr + token)
        r_in = tl.load(residual_ptr + token * stride_residual + cols, mask=mask, other=0.0)
        d = tl.load(table_ptr + slot * stride_table + cols, mask=mask, other=0.0) * token_scale
        r = r_in.to(tl.float32)

        if mode == NORM_PRESERVING:  # hidden is only read on this path
            x = tl.load(hidden_ptr + token * stride_hidden + cols, mask=mask, other=0.0)
            x = x.to(tl.float32)
            h = x + r
            hn = h + d
            norm_h = tl.sqrt(tl.sum(h * h, axis=0))
            norm_hn = tl.sqrt(tl.sum(hn * hn, axis=0))
            new = hn * (norm_h / tl.maximum(norm_hn, eps)) - x
        else:
            new = r + d

        is_steered = tl.max((d != 0.0).to(tl.int32), axis=0) > 0
        out = tl.where(is_steered, new.to(out_ptr.dtype.element_ty), r_in)
        tl.store(out_ptr + token * stride_out + cols, out, mask=mask)


def _num_warps(block_h: int) -> int:
    """Keep about 8 to 16 elements per thread so wide rows do not spill registers."""
    return max(1, min(16, block_h // 256))


def steer_residual_triton(
    hidden: Tensor, residual: Tensor, table: Tensor, modes: Tensor, token_slots: Tensor, token_scales: Tensor
) -> Tensor:
    """One program per token, the whole row in registers, so both norms need one pass."""
    if triton is None:
        raise RuntimeError("steer_residual_triton needs triton, which is not installed")
    num_tokens, hidden_size = residual.shape
    if hidden.shape != residual.shape or hidden.dtype != residual.dtype:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} {hidden.dtype} and residual "
            f"{tuple(residual.shape)} {residual.dtype} must match"
        )
    if table.dtype != torch.float32 or table.shape[-1] != hidden_size:
        raise ValueError(
            f"table must be float32 [S+1, {hidden_size}], got {table.dtype} {tuple(table.shape)}"
        )
    if modes.dtype != torch.int32 or token_slots.dtype != torch.int32:
        raise ValueError("modes and token_slots must be int32")
    if token_scales.dtype != torch.float32:
        raise ValueError(f"token_scales must be float32, got {token_scales.dtype}")
    if token_slots.shape[0] < num_tokens or token_scales.shape[0] < num_tokens:
        raise ValueError(f"token_slots / token_scales have {token_slots.shape[0]} / {token_scales.shape[0]} "
                         f"entries for {num_tokens} tokens")
    if hidden.stride(-1) != 1 or residual.stride(-1) != 1 or table.stride(-1) != 1:
        raise ValueError("hidden, residual and table need a contiguous last dimension")

    out = torch.empty((num_tokens, hidden_size), dtype=residual.dtype, device=residual.device)
    if num_tokens == 0:
        return out
    block_h = triton.next_power_of_2(hidden_size)
    _steer_residual_kernel[(num_tokens,)](
        hidden,
        residual,
        table,
        modes.contiguous(),
        token_slots.contiguous(),
        token_scales.contiguous(),
        out,
        hidden.stride(0),
        residual.stride(0),
        table.stride(0),
        out.stride(0),
        hidden_size,
        EPS,
        BLOCK_H=block_h,
        NORM_PRESERVING=MODE_NORM_PRESERVING,
        num_warps=_num_warps(block_h),
    )
    return out


_lib = None  # the torch.library fragment holding the custom op, once registered


def _fake_steer_residual(hidden: Tensor, residual: Tensor, table: Tensor, modes: Tensor,
                         token_slots: Tensor, token_scales: Tensor) -> Tensor:
    return torch.empty_like(residual)


def _register_cuda_op() -> None:
    """``torch.ops.cast_vllm.steer_residual`` (CUDA): the Triton kernel plus its fake."""
    global _lib
    from torch.library import Library
    from vllm.utils.torch_utils import direct_register_custom_op

    lib = Library("cast_vllm", "FRAGMENT")
    direct_register_custom_op("steer_residual", steer_residual_triton, mutates_args=[],
                              fake_impl=_fake_steer_residual, target_lib=lib, dispatch_key="CUDA")
    _lib = lib


def steering_fn(device: torch.device | str):
    """The function a steered layer calls on ``device``: the custom op (Triton) on CUDA, the
    torch reference elsewhere (CPU, or no triton installed)."""
    if torch.device(device).type == "cuda" and triton is not None:
        if _lib is None:
            _register_cuda_op()
        return torch.ops.cast_vllm.steer_residual
    return steer_residual_reference
