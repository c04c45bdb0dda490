"""The numbers of CAST without models or files: which selected samples serve as each one's
demonstrations, per-sample differences -> one direction per layer, per-layer source weights,
and the random control vector. Pure functions, reused by ``extract`` and ``eval``."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from cast_vllm.method.options import AGGREGATES, ExtractionError
from cast_vllm.vectors import SteeringVector


def assign_demos(n_selected: int, num_demos: int, seed: int = 0) -> list[list[int]]:
    """For each selected position ``i``, ``num_demos`` other positions (seeded, no repeats)."""
    if not 1 <= num_demos < n_selected:
        raise ExtractionError(f"num_demos must be in [1, {n_selected - 1}] for {n_selected} samples, got {num_demos}")
    rng = np.random.default_rng([seed, 2])
    out = []
    for i in range(n_selected):
        others = np.array([j for j in range(n_selected) if j != i])
        out.append(rng.choice(others, size=num_demos, replace=False).tolist())
    return out


def assign_balanced_demos(labels: Sequence[str], num_demos: int, seed: int = 0) -> list[list[int]]:
    """Like ``assign_demos``, but each sample's demonstrations cover the gold labels as evenly
    as the others allow (labels taken round-robin in a seeded order, a seeded member of each),
    in shuffled order: no label dominates a prompt or its last position, so the few-shot shift
    carries less label prior."""
    n = len(labels)
    if not 1 <= num_demos < n:
        raise ExtractionError(f"num_demos must be in [1, {n - 1}] for {n} samples, got {num_demos}")
    rng = np.random.default_rng([seed, 3])
    out = []
    for i in range(n):
        by_label: dict[str, list[int]] = {}
        for j in rng.permutation(n).tolist():
            if j != i:
                by_label.setdefault(labels[j], []).append(j)
        order = [by_label[k] for k in rng.permutation(sorted(by_label)).tolist()]
        picks: list[int] = []
        while len(picks) < num_demos:
            for members in order:
                if members and len(picks) < num_demos:
                    picks.append(members.pop())
        out.append(rng.permutation(picks).tolist())
    return out


def label_balanced_weights(labels: Sequence[str]) -> np.ndarray:
    """Per-sample weights summing to 1 that give every gold label the same total weight."""
    if not len(labels):
        raise ExtractionError("no samples to weight")
    keys, inverse, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True,
                                      return_counts=True)
    return 1.0 / (len(keys) * counts[inverse])


def aggregate_differences(diffs: np.ndarray, method: str = "mean", weights: np.ndarray | None = None) -> np.ndarray:
    """``[samples, layers, hidden]`` -> ``[layers, hidden]``: the (``weights``-weighted) mean
    difference, or with ``pca`` the first principal direction of the differences (uncentred,
    rows weighted likewise, sign-aligned with the mean, scaled to the mean's projection on it)."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.ndim != 3 or len(diffs) == 0:
        raise ExtractionError(f"differences must be [samples, layers, hidden], got shape {diffs.shape}")
    w = np.full(len(diffs), 1.0 / len(diffs)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(diffs),) or (w < 0).any() or not np.isclose(w.sum(), 1.0):
        raise ExtractionError(f"weights must be {len(diffs)} non-negative numbers summing to 1")
    mean = diffs.mean(axis=0) if weights is None else np.einsum("s,slh->lh", w, diffs)
    if method == "mean":
        return mean.astype(np.float32)
    if method != "pca":
        raise ExtractionError(f"unknown aggregate {method!r}; use one of {', '.join(AGGREGATES)}")
    out = np.empty_like(mean)
    rows = np.sqrt(w)[:, None]
    for layer in range(diffs.shape[1]):
        _, _, vt = np.linalg.svd(rows * diffs[:, layer, :], full_matrices=False)
        u = vt[0]
        proj = float(mean[layer] @ u)
        if proj < 0:
            u, proj = -u, -proj
        out[layer] = proj * u
    return out.astype(np.float32)


def similarity_weights(source_means: dict[str, np.ndarray], target_mean: np.ndarray | None,
                       threshold: float = 0.0) -> dict[str, np.ndarray]:
    """Per-layer source weights summing to 1: cosine to the target's mean zero-shot
    activation (below ``threshold`` -> 0), or equal without a target."""
    names = list(source_means)
    if target_mean is None:
        n_layers = next(iter(source_means.values())).shape[0]
        return {name: np.full(n_layers, 1.0 / len(names)) for name in names}
    t = np.asarray(target_mean, dtype=np.float64)
    cos = {}
    for name in names:
        s = np.asarray(source_means[name], dtype=np.float64)
        cos[name] = (s * t).sum(-1) / np.maximum(np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1), 1e-12)
    raw = np.stack([np.where(cos[n] >= threshold, np.clip(cos[n], 0.0, None), 0.0) for n in names])
    total = raw.sum(axis=0)
    if (total <= 0).any():
        bad = np.nonzero(total <= 0)[0].tolist()
        raise ExtractionError(f"no source is similar enough to the target at layer positions {bad} "
                              f"(similarity threshold {threshold}); lower --similarity-threshold")
    return {n: raw[k] / total for k, n in enumerate(names)}


def relative_to_residual(directions: np.ndarray, residual_norms: np.ndarray) -> np.ndarray:
    """``[layers, hidden]`` -> every layer resized to the same share of its residual norm, that
    share being the median over layers of the input's own ``|v_l| / |h_l|``: at scale 1 the
    vector is as large as before where it is typical, and no layer is far larger or smaller
    than its stream (the few-shot shift's norm grows with depth, as the residual does, but
    not in step)."""
    directions = np.asarray(directions, dtype=np.float64)
    residual_norms = np.asarray(residual_norms, dtype=np.float64)
    if directions.ndim != 2 or residual_norms.shape != (directions.shape[0],):
        raise ExtractionError(f"need [layers, hidden] directions and one residual norm per layer, got "
                              f"{directions.shape} and {residual_norms.shape}")
    if not (np.isfinite(residual_norms).all() and (residual_norms > 0).all()):
        raise ExtractionError("residual norms must be positive and finite")
    norms = np.linalg.norm(directions, axis=1)
    live = norms > 0
    if not live.any():
        raise ExtractionError("the vector is zero at every layer")
    share = float(np.median(norms[live] / residual_norms[live]))
    scale = np.where(live, share * residual_norms / np.where(live, norms, 1.0), 0.0)
    return (directions * scale[:, None]).astype(np.float32)


def unique_names(stems: Sequence[str]) -> list[str]:
    """Source names for ``similarity_weights``: file stems, made unique with ``#k`` (k: the
    position) when two sources share one."""
    return [s if list(stems).count(s) == 1 else f"{s}#{k}" for k, s in enumerate(stems)]


def random_control_vector(vector: SteeringVector, seed: int = 0) -> SteeringVector:
    """A random direction per layer with the vector's per-layer norm: the control that must
    not help."""
    g = torch.Generator().manual_seed(seed)
    dirs = {}
    for layer, v in vector.directions.items():
        r = torch.randn(v.shape, generator=g)
        dirs[layer] = r * (v.norm() / r.norm())
    meta = {**vector.metadata, "method": "random-control", "control_seed": str(seed)}
    return SteeringVector(dirs, meta)
