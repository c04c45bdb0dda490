"""Analysis plots of an extraction (PNG) and their numbers (JSON).

- ``layer_norms.png``: the vector's norm per layer (where the few-shot shift is large);
- ``similarity_by_layer.png``: mean pairwise cosine of the per-example difference vectors
  within each task and across each pair of tasks, per layer (the paper's observation that the
  enhancement in-context examples cause points the same way across examples and tasks);
- ``similarity_layer<L>.png``: the full example-by-example cosine matrix at one layer, tasks
  as blocks;
- ``report.json``: the numbers behind the plots.

Matplotlib is used through ``Figure`` objects (Agg canvas), never pyplot, so plotting changes
no global state of the caller.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def similarity_summary(diffs_by_task: Mapping[str, np.ndarray]) -> dict[str, list[float]]:
    """Per layer, mean cosine between difference vectors: ``"A"`` within task A (off-diagonal
    pairs), ``"A | B"`` across A and B. Inputs are ``[examples, layers, hidden]``."""
    names = list(diffs_by_task)
    units = {n: _unit(diffs_by_task[n]) for n in names}
    out: dict[str, list[float]] = {}
    for a_i, a in enumerate(names):
        ua = units[a]
        m = len(ua)
        if m >= 2:
            gram = np.einsum("ilh,jlh->lij", ua, ua)
            off = (gram.sum(axis=(1, 2)) - np.trace(gram, axis1=1, axis2=2)) / (m * (m - 1))
            out[a] = off.tolist()
        for b in names[a_i + 1:]:
            ub = units[b]
            out[f"{a} | {b}"] = np.einsum("ilh,jlh->l", ua, ub).__truediv__(len(ua) * len(ub)).tolist()
    return out


def _save(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_layer_norms(directions: Mapping[int, np.ndarray], path: str | Path, title: str = "CAST vector") -> Path:
    from matplotlib.figure import Figure

    layers = sorted(directions)
    norms = [float(np.linalg.norm(np.asarray(directions[layer], dtype=np.float64))) for layer in layers]
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    ax.plot(layers, norms, marker="o", ms=3)
    ax.set_xlabel("layer (output of decoder layer i)")
    ax.set_ylabel("L2 norm")
    ax.set_title(f"{title}: norm per layer")
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_similarity_by_layer(summary: Mapping[str, Sequence[float]], layers: Sequence[int], path: str | Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.8))
    ax = fig.subplots()
    for name, values in summary.items():
        ax.plot(layers, values, marker="o", ms=3, ls="--" if "|" in name else "-",
                label=("across " if "|" in name else "within ") + name)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean cosine of differences")
    ax.set_ylim(min(-0.05, min(min(v) for v in summary.values()) - 0.05), 1.0)
    ax.set_title("few-shot minus zero-shot: consistency within and across tasks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, Path(path))


def plot_similarity_matrix(diffs_by_task: Mapping[str, np.ndarray], layer_pos: int, layer: int,
                           path: str | Path) -> Path:
    from matplotlib.figure import Figure

    names = list(diffs_by_task)
    stacked = np.concatenate([_unit(diffs_by_task[n][:, layer_pos, :]) for n in names])
    gram = stacked @ stacked.T
    fig = Figure(figsize=(5.6, 4.8))
    ax = fig.subplots()
    im = ax.imshow(gram, vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046)
    edges = np.cumsum([len(diffs_by_task[n]) for n in names])
    for e in edges[:-1]:
        ax.axhline(e - 0.5, color="k", lw=0.8)
        ax.axvline(e - 0.5, color="k", lw=0.8)
    starts = np.concatenate([[0], edges[:-1]])
    ax.set_xticks((starts + edges - 1) / 2, names, fontsize=7, rotation=20)
    ax.set_yticks((starts + edges - 1) / 2, names, fontsize=7)
    ax.set_title(f"cosine of per-example differences, layer {layer}")
    return _save(fig, Path(path))


def write_report(result, out_dir: str | Path, matrix_layer: int | None = None) -> list[Path]:
    """All plots and ``report.json`` for an ``ExtractionResult`` (sources and compared tasks)."""
    from cast_vllm.method.pipeline import source_names

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    everything = list(result.sources) + list(getattr(result, "compared", []))
    names = source_names(everything)
    diffs = {n: r.diffs for n, r in zip(names, everything)}
    layers = list(result.layers)
    if matrix_layer is None or matrix_layer not in layers:
        matrix_layer = layers[len(layers) // 2]
    summary = similarity_summary(diffs)
    files = [
        plot_layer_norms({layer: t.numpy() for layer, t in result.vector.directions.items()}, out / "layer_norms.png"),
        plot_similarity_by_layer(summary, layers, out / "similarity_by_layer.png"),
        plot_similarity_matrix(diffs, layers.index(matrix_layer), matrix_layer,
                               out / f"similarity_layer{matrix_layer}.png"),
    ]
    numbers = {
        "layers": layers,
        "vector_norm": {str(layer): float(t.norm()) for layer, t in result.vector.directions.items()},
        "mean_cosine": summary,
        "examples": {n: int(len(d)) for n, d in diffs.items()},
        "in_vector": names[: len(result.sources)],
        "weights": result.weights,
    }
    path = out / "report.json"
    path.write_text(json.dumps(numbers, indent=1))
    files.append(path)
    logger.info("wrote %d report files to %s", len(files), out)
    return files
