"""The slot table's eager CPU shortcuts give the same numbers as the full steering op."""

import pytest
import torch
from torch import nn

from cast_vllm.engine.slot_table import STEP_ADD, STEP_FULL, STEP_SKIP, SlotTable
from cast_vllm.kernels.steer_residual import steer_residual_reference

LAYERS, SLOTS, HIDDEN, MAX_TOKENS = 3, 4, 16, 32


class PassThroughLayer(nn.Module):
    def forward(self, positions, hidden_states, residual):
        return hidden_states, residual


@pytest.fixture
def table():
    layers = nn.ModuleList(PassThroughLayer() for _ in range(LAYERS))
    t = SlotTable(layers, SLOTS, HIDDEN, MAX_TOKENS, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    t.write_slot(1, {i: torch.randn(HIDDEN, generator=g) for i in range(LAYERS)}, dict.fromkeys(range(LAYERS), "add"))
    t.write_slot(2, {0: torch.randn(HIDDEN, generator=g)}, {0: "norm_preserving"})
    return t, layers


def run_step(table, layers, slots, dtype=torch.float32, scales=None):
    host = table.host_token_slots()
    host[: len(slots)] = slots
    table.host_token_scales()[: len(slots)] = scales if scales is not None else [1.0] * len(slots)
    table.publish_token_slots(len(slots))
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(len(slots), HIDDEN, generator=g).to(dtype)
    residual = torch.randn(len(slots), HIDDEN, generator=g).to(dtype)
    outs = []
    for i, layer in enumerate(layers):
        _, got = layer(None, hidden, residual)
        want = steer_residual_reference(hidden, residual, table.rows[i], table.modes[i], table.token_slots,
                                        table.token_scales)
        outs.append((got, want))
    return outs


@pytest.mark.parametrize("slots,path", [([0, 0, 0], STEP_SKIP), ([0, 1, 1, 0], STEP_ADD), ([1, 2, 0], STEP_FULL)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_path_matches_full_op(table, slots, path, dtype):
    t, layers = table
    outs = run_step(t, layers, slots, dtype)
    assert t.eager_path == path
    for got, want in outs:
        assert got.dtype == dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("slots", [[0, 1, 1, 0], [1, 2, 0]])
def test_per_token_scales_scale_the_row(table, slots):
    """Scale s on an unscaled row gives the bits a row holding s * v gave before (the same
    float32 product), on both eager paths; scale 0 leaves the token as it came."""
    t, layers = table
    scales = torch.tensor([0.5, -2.0, 3.25, 0.0][: len(slots)])
    outs = run_step(t, layers, slots, scales=scales.numpy())
    g = torch.Generator().manual_seed(1)   # run_step's inputs
    _, residual = torch.randn(len(slots), HIDDEN, generator=g), torch.randn(len(slots), HIDDEN, generator=g)
    index = torch.tensor(slots)
    for i, (got, want) in enumerate(outs):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        add = t.modes[i][index] == 0
        assert torch.equal(got[add], (residual + t.rows[i][index] * scales[:, None])[add])
        assert torch.equal(got[scales == 0], residual[scales == 0])


def test_path_follows_each_step(table):
    t, layers = table
    run_step(t, layers, [2, 1])
    assert t.eager_path == STEP_FULL
    run_step(t, layers, [0])  # the previous step's steered tokens must not leak into this one
    assert t.eager_path == STEP_SKIP
    assert not t.token_slots.any()
    t.write_slot(2, {1: torch.ones(HIDDEN)}, {1: "add"})  # slot reused by an add-only vector
    run_step(t, layers, [2])
    assert t.eager_path == STEP_ADD
