"""The fused steering kernel against its torch reference, and the reference against the formulas.

The Triton kernel runs on CPU under the Triton interpreter. Triton reads TRITON_INTERPRET when
a function is decorated with @triton.jit, including its own ``tl.sum``/``tl.max`` at
``import triton``, so the flag cannot be switched on once triton is imported. Setting it at the
top of this module would also leak into every test collected after it (on a GPU box, vLLM's
kernels would then be interpreted). So the ``test_interp_*`` tests run in a child pytest that
starts with TRITON_INTERPRET=1, and check that the interpreter really runs the kernel.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cast_vllm.kernels import steer_residual as sr
from cast_vllm.kernels.modes import MODE_ADD, MODE_IDS, MODE_NORM_PRESERVING
from cast_vllm.kernels.modes import MODES as MODE_NAMES
from cast_vllm.kernels.steer_residual import steer_residual_reference, steer_residual_triton, steering_fn

IN_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
interp_only = pytest.mark.skipif(
    not IN_INTERPRETER, reason="runs in the child pytest of test_triton_kernel_under_interpreter"
)
needs_triton = pytest.mark.skipif(sr.triton is None, reason="triton is not installed")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}

# Row 0 is the zero row with the norm mode (1), to show the mode of slot 0 does not matter; row 3
# is a zero row in add mode. Slots past T hold an out-of-range index that must never be read.
MODES = [1, 0, 1, 0, 1]
ZERO_ROWS = (0, 3)
UNUSED_SLOT = 99


def make_case(num_tokens, hidden_size, dtype, seed=0, row_stride=None):
    """Every slot once T >= 5 (T = 1 gets a norm-mode row), rows strided when ``row_stride`` is given;
    per-token scales of both signs, 1 and 0 among them (0: unsteered, whatever the row)."""
    g = torch.Generator().manual_seed(seed)
    width = row_stride or hidden_size
    start = width - hidden_size
    hidden = torch.randn(num_tokens, width, generator=g).to(dtype)[:, start:]
    residual = torch.randn(num_tokens, width, generator=g).to(dtype)[:, start:]
    residual[:, ::5] = -0.0  # a sign of zero that `r + 0.0` would lose
    table = (3.0 * torch.randn(len(MODES), width, generator=g))[:, start:]
    table[list(ZERO_ROWS)] = 0.0
    slots = torch.full((num_tokens + 3,), UNUSED_SLOT, dtype=torch.int32)
    cycle = (torch.arange(num_tokens, dtype=torch.int32) + 2) % len(MODES)
    slots[:num_tokens] = cycle[torch.randperm(num_tokens, generator=g)]
    modes = torch.tensor(MODES, dtype=torch.int32)
    scales = torch.full((num_tokens + 3,), 1e30)   # past T: never read (it would blow the output up)
    scales[:num_tokens] = 2.0 * torch.randn(num_tokens, generator=g)
    scales[:num_tokens:4] = 1.0
    scales[2:num_tokens:7] = 0.0
    return hidden, residual, table, modes, slots, scales


def bits(x):
    """Bitwise view: torch.equal says -0.0 == 0.0."""
    return x.view({4: torch.int32, 2: torch.int16}[x.element_size()])


def naive_steer(hidden, residual, table, modes, token_slots, token_scales):
    """One token at a time, straight from the formulas, in float64."""
    out = residual.clone()
    for t in range(residual.shape[0]):
        slot = int(token_slots[t])
        d = table[slot].double() * float(token_scales[t])
        if not d.any():
            continue
        x, r = hidden[t].double(), residual[t].double()
        if int(modes[slot]) == MODE_ADD:
            out[t] = (r + d).to(residual.dtype)
        else:
            h = x + r
            hn = h + d
            out[t] = (hn * (h.norm() / max(hn.norm(), 1e-6)) - x).to(residual.dtype)
    return out


def assert_matches(actual, expected, case):
    """Close everywhere, bitwise equal to the input residual on zero rows and zero scales."""
    residual, token_slots, token_scales = case[1], case[4], case[5]
    tol = TOLERANCE[residual.dtype]
    assert actual.dtype == residual.dtype and actual.shape == residual.shape
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol, rtol=tol)
    n = residual.shape[0]
    unsteered = torch.isin(token_slots[:n], torch.tensor(ZERO_ROWS, dtype=torch.int32)) | (token_scales[:n] == 0)
    assert unsteered.any() or n < 3
    assert torch.equal(bits(actual[unsteered]), bits(residual[unsteered]))


# --- the torch reference --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens,hidden_size", [(1, 64), (7, 100), (33, 576)])
def test_reference_matches_naive_loop(num_tokens, hidden_size, dtype):
    case = make_case(num_tokens, hidden_size, dtype)
    inputs = [t.clone() for t in case]
    out = steer_residual_reference(*case)
    assert_matches(out, naive_steer(*case), case)
    for before, after in zip(inputs, case):
        assert torch.equal(before, after)


def test_reference_preserves_the_stream_norm():
    hidden, residual, table, modes, slots, scales = make_case(33, 576, torch.float32)
    out = steer_residual_reference(hidden, residual, table, modes, slots, scales)
    norm_rows = ((modes[slots[:33].long()] == MODE_NORM_PRESERVING) & ~torch.isin(slots[:33], torch.tensor(ZERO_ROWS))
                 & (scales[:33] != 0))
    assert norm_rows.any()
    torch.testing.assert_close(
        (hidden + out)[norm_rows].norm(dim=-1), (hidden + residual)[norm_rows].norm(dim=-1)
    )


def test_reference_compiles_fullgraph_with_dynamic_tokens():
    """vLLM traces it once with fullgraph=True and a symbolic token count."""
    fn = torch.compile(steer_residual_reference, fullgraph=True, dynamic=True, backend="aot_eager")
    for num_tokens in (5, 9):
        case = make_case(num_tokens, 64, torch.bfloat16, seed=num_tokens)
        assert torch.equal(bits(fn(*case)), bits(steer_residual_reference(*case)))


def test_dispatch_uses_the_reference_off_cuda():
    case = make_case(7, 100, torch.bfloat16)
    assert steering_fn(torch.device("cpu")) is steer_residual_reference is steering_fn("cpu")
    assert torch.equal(bits(steering_fn(case[1].device)(*case)), bits(steer_residual_reference(*case)))


def test_mode_ids_are_defined_once():
    """The spec's names, the slot table's ids and the kernels' ids are the same objects."""
    from cast_vllm import spec
    from cast_vllm.engine import slot_table

    assert MODE_IDS == {"add": 0, "norm_preserving": 1} and MODE_NAMES == ("add", "norm_preserving")
    assert spec.MODES is MODE_NAMES and slot_table.MODE_IDS is MODE_IDS
    assert (sr.MODE_ADD, sr.MODE_NORM_PRESERVING) == (MODE_ADD, MODE_NORM_PRESERVING)


def test_fake_impl_has_the_output_shape():
    """What torch.compile sees for the custom op: an uninitialised tensor like ``residual``."""
    fake = sr._fake_steer_residual(*make_case(7, 100, torch.bfloat16))
    residual = make_case(7, 100, torch.bfloat16)[1]
    assert fake.shape == residual.shape and fake.dtype == residual.dtype


# --- the Triton kernel --------------------------------------------------------------------


@needs_triton
def test_triton_kernel_under_interpreter():
    """Runs the test_interp_* tests in a child process that starts with TRITON_INTERPRET=1."""
    if IN_INTERPRETER:
        pytest.skip("already in the interpreter child")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    child = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-k", "test_interp_", "--noconftest",
         "-p", "no:cacheprovider", "-rs"],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=600,
    )
    report = child.stdout + child.stderr
    assert child.returncode == 0, report
    summary = report.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary) and "skipped" not in summary, report


@pytest.fixture
def interpreted_kernel():
    """Fails rather than skips: in the child the interpreter must really be in use."""
    from triton.runtime.interpreter import InterpretedFunction

    assert sr.triton.knobs.runtime.interpret
    assert isinstance(sr._steer_residual_kernel, InterpretedFunction)
    return sr._steer_residual_kernel


@interp_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden_size", [64, 576, 100])
@pytest.mark.parametrize("num_tokens", [1, 7, 33])
def test_interp_kernel_matches_reference(interpreted_kernel, num_tokens, hidden_size, dtype):
    case = make_case(num_tokens, hidden_size, dtype, seed=num_tokens * hidden_size)
    inputs = [t.clone() for t in case]
    out = steer_residual_triton(*case)
    assert_matches(out, steer_residual_reference(*case), case)
    for before, after in zip(inputs, case):
        assert torch.equal(before, after)


@interp_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_interp_kernel_strided_rows(interpreted_kernel, dtype):
    """Slices of wider tensors: hidden, residual and table all have a row stride != H."""
    case = make_case(7, 100, dtype, row_stride=160)
    assert all(t.stride(0) == 160 and not t.is_contiguous() for t in case[:3])
    out = steer_residual_triton(*case)
    assert out.is_contiguous()
    assert_matches(out, steer_residual_reference(*case), case)


@interp_only
def test_interp_kernel_one_launch_per_batch(interpreted_kernel, monkeypatch):
    launches = []

    class Spy:
        def __getitem__(self, grid):
            launches.append(grid)
            return interpreted_kernel[grid]

    monkeypatch.setattr(sr, "_steer_residual_kernel", Spy())
    case = make_case(33, 576, torch.bfloat16)
    out = steer_residual_triton(*case)
    assert launches == [(33,)]
    assert_matches(out, steer_residual_reference(*case), case)


@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available() or IN_INTERPRETER, reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens,hidden_size", [(1, 64), (33, 576), (300, 896), (64, 4096)])
def test_compiled_kernel_on_cuda(num_tokens, hidden_size, dtype):
    case = [t.cuda() for t in make_case(num_tokens, hidden_size, dtype)]
    op = steering_fn(case[1].device)
    assert op is not steer_residual_reference   # the registered custom op, torch.ops.cast_vllm.steer_residual
    out = op(*case)
    assert_matches(out.cpu(), steer_residual_reference(*case).cpu(), [t.cpu() for t in case])
