"""Benchmark of the fused steering kernel (cast_vllm.kernels.steer_residual).

The kernel is memory-bound, so it is judged by achieved bandwidth over the bytes it must move:
per token it reads residual and hidden (norm_preserving reads both), one float32 table row,
and writes the new residual. Table rows are counted per token even though a handful of rows
is shared by the whole batch and mostly served from L2, so this is the nominal traffic.

With CUDA: the Triton kernel and the eager torch reference, timed by ``triton.testing.do_bench``.
Without CUDA: the torch reference on the CPU, eager (what an eager CPU engine runs) and through
``torch.compile`` (``compiled_reference_ms``: what the compiled CPU engine runs, where Inductor
fuses the whole op into one kernel per layer).
Writes ``kernel_<device>.json`` and ``.png`` into ``--out-dir`` (``bench/results`` in a checkout).

    cast-vllm bench kernel [--tokens 64 256 ...] [--hidden 576 4096] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from pathlib import Path

from cast_vllm.benchmarks import default_results_dir
from cast_vllm.kernels.modes import MODE_ADD, MODE_NORM_PRESERVING   # torch-free, unlike the kernel

# torch and the kernel load inside the functions, so `--help` works in any install.
DEFAULT_TOKENS = [16, 64, 256, 1024, 4096, 16384]   # 16: a decode step of batch 16
DEFAULT_HIDDEN = [576, 4096]


def parse_args(argv: list[str] | None, prog: str = "cast-vllm bench kernel",
               results_dir: Path | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=DEFAULT_TOKENS)
    p.add_argument("--hidden", type=int, nargs="+", default=DEFAULT_HIDDEN)
    p.add_argument("--rows", type=int, default=8, help="steering rows in the table, besides row 0")
    p.add_argument("--mode", choices=["norm_preserving", "add"], default="norm_preserving",
                   help="mode of every steered row (norm_preserving also reads hidden)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU intra-op threads (default: torch's); on a busy machine 1 avoids OpenMP stalls")
    p.add_argument("--out-dir", type=Path, default=results_dir or default_results_dir(),
                   help="where kernel_<device>.json and .png go (default: %(default)s)")
    return p.parse_args(argv)


def make_inputs(num_tokens: int, hidden_size: int, rows: int, mode: int, device: str):
    """Every token steered, spread over all rows: the worst case for traffic."""
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(num_tokens, hidden_size, device=device, generator=g, dtype=torch.bfloat16)
    residual = torch.randn(num_tokens, hidden_size, device=device, generator=g, dtype=torch.bfloat16)
    table = torch.randn(rows + 1, hidden_size, device=device, generator=g)
    table[0] = 0.0
    modes = torch.full((rows + 1,), mode, dtype=torch.int32, device=device)
    slots = (torch.arange(num_tokens, device=device, dtype=torch.int32) % rows) + 1
    scales = 0.5 + torch.rand(num_tokens, device=device, generator=g)
    return hidden, residual, table, modes, slots, scales


def bytes_moved(num_tokens: int, hidden_size: int, mode: int) -> int:
    streams = 3 if mode == MODE_NORM_PRESERVING else 2  # hidden, residual, out (bf16)
    # + one float32 row per token, and its slot and scale
    return num_tokens * hidden_size * (2 * streams + 4) + num_tokens * 8


def time_cpu_ms(fn, min_time_s: float = 0.5, max_runs: int = 20) -> float:
    """Median of repeated calls after one warm-up; do_bench needs a GPU."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < 3 or time.perf_counter() - start < min_time_s):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run(args: argparse.Namespace) -> dict:
    import torch

    from cast_vllm.kernels.steer_residual import steer_residual_reference, steer_residual_triton

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    mode = MODE_NORM_PRESERVING if args.mode == "norm_preserving" else MODE_ADD
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    if cuda:
        from triton.testing import do_bench

        device_name = torch.cuda.get_device_name()
    else:
        device_name = f"cpu ({platform.machine()}, torch threads: {torch.get_num_threads()})"
        print("CUDA is not available: timing only the torch reference on the CPU "
              "(the Triton kernel needs a GPU; it is tested on the CPU with TRITON_INTERPRET=1).")

    compiled = None if cuda else torch.compile(steer_residual_reference, dynamic=True)
    results = []
    for hidden_size in args.hidden:
        for num_tokens in args.tokens:
            inputs = make_inputs(num_tokens, hidden_size, args.rows, mode, device)
            nbytes = bytes_moved(num_tokens, hidden_size, mode)
            row = {"tokens": num_tokens, "hidden": hidden_size, "bytes": nbytes}
            if cuda:
                out = steer_residual_triton(*inputs)
                torch.testing.assert_close(out, steer_residual_reference(*inputs), atol=2e-2, rtol=2e-2)
                row["triton_ms"] = do_bench(lambda: steer_residual_triton(*inputs), return_mode="median")
                row["reference_ms"] = do_bench(lambda: steer_residual_reference(*inputs), return_mode="median")
            else:
                row["reference_ms"] = time_cpu_ms(lambda: steer_residual_reference(*inputs))
                row["compiled_reference_ms"] = time_cpu_ms(lambda: compiled(*inputs))
            for impl in ("triton", "reference", "compiled_reference"):
                if f"{impl}_ms" in row:
                    row[f"{impl}_gbps"] = nbytes / (row[f"{impl}_ms"] * 1e-3) / 1e9
            results.append(row)
            print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            del inputs

    return {
        "device": device_name,
        "backend": device,
        "dtype": "bfloat16",
        "mode": args.mode,
        "table_rows": args.rows + 1,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "load_average_1min_before": load_before,
        "bytes": "T * H * (2 bytes x (hidden, residual, out) + 4 bytes x table row); add mode skips hidden",
        "results": results,
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for hidden_size in sorted({r["hidden"] for r in report["results"]}):
        rows = [r for r in report["results"] if r["hidden"] == hidden_size]
        tokens = [r["tokens"] for r in rows]
        for impl, style in (("triton", "-o"), ("reference", "--s"), ("compiled_reference", ":^")):
            if f"{impl}_gbps" in rows[0]:
                ax.plot(tokens, [r[f"{impl}_gbps"] for r in rows], style, label=f"{impl}, H={hidden_size}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens in the batch")
    ax.set_ylabel("achieved GB/s (nominal bytes)")
    ax.set_title(f"steer_residual, bf16, {report['mode']}\n{report['device']}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None, *, prog: str = "cast-vllm bench kernel",
         results_dir: Path | None = None) -> int:
    """Run the benchmark; ``results_dir``: the default ``--out-dir`` (default_results_dir())."""
    args = parse_args(argv, prog, results_dir)
    report = run(args)
    tag = "cpu"
    if report["backend"] == "cuda":
        tag = re.sub(r"[^a-z0-9]+", "-", report["device"].lower()).strip("-")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.out_dir / f"kernel_{tag}.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, json_path.with_suffix(".png"))
    print(f"wrote {json_path} and {json_path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
