"""Paired significance tests of a method against zero-shot on the same test items.

- ``mcnemar_exact``: exact (binomial) McNemar test on per-item correctness of one run each;
  two-sided, computed with integer arithmetic (no SciPy).
- ``paired_bootstrap``: the per-item score of a method averaged over its seeds minus the
  zero-shot score, resampled over items; gives the mean difference, a 95% percentile interval
  and a two-sided p-value (twice the smaller tail mass at 0). It is the test we report as
  primary, because it uses every seed.
"""

from __future__ import annotations

from fractions import Fraction
from math import comb
from typing import Sequence

import numpy as np


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """``a`` vs ``b`` (same items). ``b01``: items only ``b`` gets right, ``b10``: only ``a``."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"McNemar needs two equally long 1-D correctness vectors, got {a.shape} and {b.shape}")
    b10 = int((a & ~b).sum())
    b01 = int((~a & b).sum())
    n = b10 + b01
    if n == 0:
        p = 1.0
    else:
        k = min(b10, b01)
        tail = Fraction(sum(comb(n, i) for i in range(k + 1)), 2 ** n)
        p = float(min(Fraction(1), 2 * tail))
    return {"test": "exact McNemar (two-sided)", "only_method": b10, "only_reference": b01, "p_value": p}


def paired_bootstrap(method: np.ndarray, reference: np.ndarray, *, samples: int = 10000, seed: int = 0) -> dict:
    """``method``: ``[seeds, items]`` or ``[items]`` correctness; ``reference``: ``[items]`` (or
    ``[seeds, items]``). Seeds are averaged per item first."""
    m = np.asarray(method, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    m = m.mean(axis=0) if m.ndim == 2 else m
    r = r.mean(axis=0) if r.ndim == 2 else r
    if m.shape != r.shape or m.ndim != 1 or len(m) == 0:
        raise ValueError(f"paired bootstrap needs per-item scores on the same items, got {m.shape} and {r.shape}")
    d = m - r
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(samples, len(d)))
    boot = d[idx].mean(axis=1)
    delta = float(d.mean())
    if np.all(d == 0):
        p = 1.0
    else:
        p = float(min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean())))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"test": "paired bootstrap over items (seed-averaged)", "delta": delta, "ci95": [float(lo), float(hi)],
            "p_value": p, "samples": samples}
