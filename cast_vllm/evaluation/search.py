"""Hyper-parameter search for steered methods, on the target's dev split only.

A setting is (layers, alpha, mode, positions); ``alpha`` is the engine's per-layer ``scale``.
A full grid is too costly on a CPU (every setting costs a pass over the dev items, and steered
requests cannot share prefix-cache blocks), so the search is coordinate ascent over a small
space, each stage one batched engine call:

1. layer window: ``width`` consecutive layers starting at each of ``starts``, at the first
   mode, the first position policy and ``base_alpha``;
2. alpha: the other ``alphas`` at the best window;
3. mode and positions: each other mode, and each other position policy, at the best setting;
4. width: a single layer (the window's middle) and a window twice as wide, at the best setting.

The best setting over everything evaluated wins: highest dev accuracy, ties broken by the
higher mean (renormalised) log-probability of the gold label, then by evaluation order (which
puts the prior first: the window scan, the base alpha, the first mode and positions).
``SearchSpace.for_model`` derives the windows from the depth (width ~ depth/10, starts at
10%..50% of the depth); the defaults follow the method notes' prior (early-middle layers,
norm-preserving at the last prompt token, alpha around 1-2), and every choice is made on dev.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

from cast_vllm.errors import CastVllmError
from cast_vllm.spec import MODES, POSITIONS


class SearchError(CastVllmError, ValueError):
    """A search space that cannot be searched (empty, out-of-range layers, bad values)."""


@dataclass(frozen=True)
class Setting:
    layers: tuple[int, ...]
    alpha: float
    mode: str = "norm_preserving"
    positions: str = "last_prompt"

    def spec(self, vector: str) -> dict:
        return {"vector": vector, "scale": float(self.alpha), "layers": list(self.layers),
                "positions": self.positions, "mode": self.mode}

    def to_dict(self) -> dict:
        return {"layers": list(self.layers), "alpha": float(self.alpha), "mode": self.mode,
                "positions": self.positions}


@dataclass(frozen=True)
class DevScore:
    accuracy: float
    margin: float = 0.0      # mean renormalised gold log-probability (0 for generation scoring)

    def key(self) -> tuple[float, float]:
        return (round(self.accuracy, 9), self.margin)


@dataclass(frozen=True)
class SearchSpace:
    num_layers: int
    starts: tuple[int, ...]
    width: int
    alphas: tuple[float, ...] = (1.0, 0.5, 2.0, 4.0)     # the first is the base alpha of stage 1
    modes: tuple[str, ...] = ("norm_preserving", "add")
    positions: tuple[str, ...] = ("last_prompt", "all")
    vary_width: bool = True

    def __post_init__(self):
        if not self.starts or self.width < 1 or not self.alphas or not self.modes or not self.positions:
            raise SearchError("a search space needs starts, a width >= 1, alphas, modes and positions")
        bad = [s for s in self.starts if not 0 <= s or s + self.width > self.num_layers]
        if bad:
            raise SearchError(f"windows starting at {bad} (width {self.width}) do not fit {self.num_layers} layers")
        for a in self.alphas:
            if not (a > 0 and a < float("inf")):
                raise SearchError(f"alphas must be positive and finite, got {a}")
        for m in self.modes:
            if m not in MODES:
                raise SearchError(f"unknown mode {m!r}; use {', '.join(MODES)}")
        for p in self.positions:
            if p not in POSITIONS:
                raise SearchError(f"unknown positions {p!r}; use {', '.join(POSITIONS)}")

    @classmethod
    def for_model(cls, num_layers: int, *, fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5),
                  width: int | None = None, **kwargs) -> "SearchSpace":
        w = width if width is not None else max(1, round(num_layers / 10))
        starts = sorted({min(max(0, round(f * num_layers)), num_layers - w) for f in fractions})
        return cls(num_layers=num_layers, starts=tuple(starts), width=w, **kwargs)

    def window(self, start: int, width: int | None = None) -> tuple[int, ...]:
        w = self.width if width is None else width
        return tuple(range(start, start + w))

    def describe(self) -> dict:
        d = asdict(self)
        d["windows"] = [list(self.window(s)) for s in self.starts]
        return d


@dataclass
class CoordinateSearch:
    """Drive with ``propose()`` -> settings to score on dev (empty when done) and
    ``tell(scores)``; read ``best`` and ``trace``."""

    space: SearchSpace
    stage: int = 0
    trace: list[tuple[Setting, DevScore]] = field(default_factory=list)
    _pending: list[Setting] = field(default_factory=list)

    def _seen(self) -> set[Setting]:
        return {s for s, _ in self.trace}

    def _candidates(self, stage: int) -> list[Setting]:
        sp = self.space
        if stage == 0:
            return [Setting(sp.window(s), sp.alphas[0], sp.modes[0], sp.positions[0]) for s in sp.starts]
        best = self.best[0]
        if stage == 1:
            return [replace(best, alpha=a) for a in sp.alphas[1:]]
        if stage == 2:
            return ([replace(best, mode=m) for m in sp.modes if m != best.mode]
                    + [replace(best, positions=p) for p in sp.positions if p != best.positions])
        if stage == 3 and sp.vary_width:
            lo, hi = best.layers[0], best.layers[-1]
            mid = (lo + hi) // 2
            out = [replace(best, layers=(mid,))]
            w2 = 2 * len(best.layers)
            start = min(max(0, lo - len(best.layers) // 2), sp.num_layers - w2) if w2 <= sp.num_layers else None
            if start is not None:
                out.append(replace(best, layers=tuple(range(start, start + w2))))
            return out
        return []

    def propose(self) -> list[Setting]:
        if self._pending:
            raise SearchError("tell() the scores of the previous proposal first")
        while self.stage < 4:
            seen = self._seen()
            new = list(dict.fromkeys(c for c in self._candidates(self.stage) if c not in seen))
            self.stage += 1
            if new:
                self._pending = new
                return list(new)
        return []

    def tell(self, scores: Sequence[DevScore]) -> None:
        if len(scores) != len(self._pending):
            raise SearchError(f"expected {len(self._pending)} scores, got {len(scores)}")
        self.trace.extend(zip(self._pending, scores))
        self._pending = []

    @property
    def pending(self) -> list[Setting]:
        """The proposed settings still waiting for ``tell``."""
        return list(self._pending)

    @property
    def done(self) -> bool:
        return self.stage >= 4 and not self._pending

    @property
    def best(self) -> tuple[Setting, DevScore]:
        if not self.trace:
            raise SearchError("nothing has been scored yet")
        best_i = max(range(len(self.trace)), key=lambda i: (self.trace[i][1].key(), -i))
        return self.trace[best_i]

    def trace_dicts(self) -> list[dict]:
        return [{**s.to_dict(), "dev_accuracy": sc.accuracy, "dev_margin": sc.margin} for s, sc in self.trace]
