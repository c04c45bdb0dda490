"""Choosing which source samples build the vector: influential and diverse ones.

``ideal`` is our reconstruction of the paper's graph-based selection (IDEAL, Zhang et al.,
ICLR 2024), exposed through its two stated settings, number of neighbours and diffusion steps:

1. Embeddings (the model's zero-shot last-token state at a middle layer) are centred and
   L2-normalised, so cosine similarity is not dominated by the component every prompt shares.
2. kNN graph: node ``u`` has an edge to each of its ``k`` nearest neighbours ``v``, weight
   ``p(u, v) = cos(u, v) / sum_{z in kNN(u)} cos(u, z)`` (negative cosines clipped to 0).
3. Influence of a set ``S``: expected number of nodes an independent cascade started at
   ``S`` activates within ``diffusion_steps`` steps (an active node activates each successor
   with probability ``p``). The expectation is a Monte Carlo mean over ``diffusion_runs``
   live-edge graphs drawn once from the seed, so the objective is a fixed coverage function
   and lazy greedy (CELF) maximises it exactly as plain greedy would, fast.
4. Greedy selection up to the budget. IDEAL starts from the node of largest out-degree; in a
   kNN graph every out-degree is ``k``, so the start is the node of largest *in*-weight (the
   centre of the densest region), ties to the lowest index.

``ideal_target`` measures influence against the *target*: the source pool's kNN graph as above,
plus the target's (unlabelled) dev queries as sink nodes, each entered from its ``neighbors``
most similar source samples (each set centred on its own mean first, so the shared prompt format
of a task does not dominate). A cascade counts only the target queries it reaches; ties (once
every reachable query is covered) go to the source sample that enters most queries directly.
The paper's "influential" samples are those that explain the target's queries, not the
source's own.

``random`` (no selection) and ``kmeans`` (diversity only: the member nearest each of ``n``
k-means++ centroids) are the ablations. Every rule is deterministic for a seed.
"""

from __future__ import annotations

import heapq
import logging

import numpy as np

from cast_vllm.errors import CastVllmError

logger = logging.getLogger(__name__)

SELECTION_RULES = ("ideal", "ideal_target", "random", "kmeans")
#: the rules that need the target's embeddings
TARGET_RULES = ("ideal_target",)


class SelectionError(CastVllmError, ValueError):
    """Selection cannot run as asked (budget larger than the pool, bad settings)."""


def _check(n_items: int, budget: int) -> None:
    if budget < 1:
        raise SelectionError(f"number of samples to select must be >= 1, got {budget}")
    if budget > n_items:
        raise SelectionError(f"cannot select {budget} samples from a pool of {n_items}")


def normalise(embeddings: np.ndarray) -> np.ndarray:
    """Centre and L2-normalise rows (float64)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise SelectionError(f"embeddings must be 2-D [items, dim], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise SelectionError("embeddings contain NaN or Inf")
    x = x - x.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def knn_graph(embeddings: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(neighbours [n, k], probabilities [n, k])``: each node's k most similar other nodes
    and its normalised edge weights."""
    x = normalise(embeddings)
    n = len(x)
    if not 1 <= k < n:
        raise SelectionError(f"neighbours must be in [1, {n - 1}] for a pool of {n}, got {k}")
    nbrs = np.empty((n, k), dtype=np.int64)
    sims = np.empty((n, k), dtype=np.float64)
    for start in range(0, n, chunk):
        s = x[start:start + chunk] @ x.T
        rows = np.arange(len(s))
        s[rows, rows + start] = -np.inf          # no self loops
        idx = np.argpartition(-s, k - 1, axis=1)[:, :k]
        part = np.take_along_axis(s, idx, axis=1)
        order = np.lexsort((idx, -part), axis=1)  # by similarity, ties by index: deterministic
        nbrs[start:start + chunk] = np.take_along_axis(idx, order, axis=1)
        sims[start:start + chunk] = np.take_along_axis(part, order, axis=1)
    return nbrs, _edge_probabilities(sims)


def _reach_sets(succ: list[list[int]], steps: int) -> list[int]:
    """Per node, the bitset of nodes reachable in <= ``steps`` hops over the live successors."""
    own = [1 << v for v in range(len(succ))]
    reach = own
    for _ in range(steps):
        prev = reach
        reach = []
        for v, nexts in enumerate(succ):
            r = own[v]
            for u in nexts:
                r |= prev[u]
            reach.append(r)
    return reach


def _live_reach(nbrs: np.ndarray, probs: np.ndarray, diffusion_steps: int, diffusion_runs: int, seed: int,
                into: tuple[np.ndarray, np.ndarray] | None = None) -> list[list[int]]:
    """Per Monte Carlo run, every node's reach bitset over one live-edge draw. ``into``
    (``[m, k]`` source indices and their probabilities) adds ``m`` sink nodes after the graph's
    ``n``, sink ``t`` entered from each listed source with its probability."""
    if diffusion_steps < 0 or diffusion_runs < 1:
        raise SelectionError("diffusion_steps must be >= 0 and diffusion_runs >= 1")
    rng = np.random.default_rng(seed)
    n = len(nbrs)
    runs = []
    for _ in range(diffusion_runs):
        live = rng.random(probs.shape) < probs
        succ = [nbrs[v][live[v]].tolist() for v in range(n)]
        if into is not None:
            srcs, p_in = into
            live_in = rng.random(p_in.shape) < p_in
            for t, u in zip(*np.nonzero(live_in)):
                succ[int(srcs[t, u])].append(n + int(t))
            succ += [[] for _ in range(len(srcs))]
        runs.append(_reach_sets(succ, diffusion_steps))
    return runs


def _edge_probabilities(sims: np.ndarray) -> np.ndarray:
    """Row-normalised non-negative similarities (uniform where a row has none)."""
    w = np.clip(sims, 0.0, None)
    total = w.sum(axis=1, keepdims=True)
    return np.where(total > 0, w / np.where(total > 0, total, 1.0), 1.0 / sims.shape[1])


def _greedy_cover(reach: list[list[int]], candidates: list[int], budget: int, counted: int,
                  tiebreak: np.ndarray, selected: list[int]) -> tuple[list[int], float]:
    """CELF: extend ``selected`` from ``candidates`` to ``budget`` nodes, each maximising the
    expected number of newly reached ``counted`` nodes (ties: higher ``tiebreak``, then lower
    index). Returns the picks and the expected number of counted nodes reached."""
    covered = [0] * len(reach)
    for v in selected:
        covered = [c | r[v] for c, r in zip(covered, reach)]
    # heap of (-gain upper bound, -tiebreak, index, round in which the bound was computed)
    heap = [(-float(sum((r[v] & counted).bit_count() for r in reach)), -float(tiebreak[v]), v, 0)
            for v in candidates if v not in selected]
    heapq.heapify(heap)
    round_ = 1
    while len(selected) < budget:
        neg_gain, neg_tie, v, computed = heapq.heappop(heap)
        if computed == round_:
            selected.append(v)
            covered = [c | r[v] for c, r in zip(covered, reach)]
            round_ += 1
            continue
        gain = sum((r[v] & counted & ~c).bit_count() for r, c in zip(reach, covered))
        heapq.heappush(heap, (-float(gain), neg_tie, v, round_))
    return selected, sum((c & counted).bit_count() for c in covered) / len(reach)


def ideal_select(embeddings: np.ndarray, budget: int, *, neighbors: int = 10, diffusion_steps: int = 10,
                 diffusion_runs: int = 10, seed: int = 0) -> list[int]:
    """Greedy influence maximisation over the kNN graph (see module doc); indices in pick order."""
    n = len(embeddings)
    _check(n, budget)
    k = min(neighbors, n - 1)
    if k < 1:
        return list(range(budget))
    nbrs, probs = knn_graph(embeddings, k)
    reach = _live_reach(nbrs, probs, diffusion_steps, diffusion_runs, seed)
    in_weight = np.zeros(n)
    np.add.at(in_weight, nbrs.ravel(), probs.ravel())
    first = int(np.argmax(in_weight))           # argmax returns the lowest index on ties
    selected, influence = _greedy_cover(reach, list(range(n)), budget, (1 << n) - 1, np.zeros(n), [first])
    logger.info("ideal selection: %d of %d samples reach %.1f nodes on average (k=%d, steps=%d, runs=%d)",
                budget, n, influence, k, diffusion_steps, diffusion_runs)
    return selected


def ideal_target_select(source: np.ndarray, target: np.ndarray, budget: int, *, neighbors: int = 10,
                        diffusion_steps: int = 10, diffusion_runs: int = 10, seed: int = 0) -> list[int]:
    """Source indices whose cascades reach the most *target* nodes (module doc), in pick order.
    The source samples form IDEAL's kNN graph; each target query is entered from its
    ``neighbors`` most similar source samples (edge probabilities normalised per query)."""
    src, tgt = normalise(source), normalise(target)
    n, m = len(src), len(tgt)
    _check(n, budget)
    if m < 1:
        raise SelectionError("target-aware selection needs at least one target embedding")
    if src.shape[1] != tgt.shape[1]:
        raise SelectionError(f"source and target embeddings differ in width: {src.shape[1]} vs {tgt.shape[1]}")
    k_in = min(neighbors, n)
    sims = tgt @ src.T
    srcs = np.argsort(-sims, axis=1, kind="stable")[:, :k_in]
    p_in = _edge_probabilities(np.take_along_axis(sims, srcs, axis=1))
    if n > 1:
        nbrs, probs = knn_graph(src, min(neighbors, n - 1))
    else:
        nbrs, probs = np.zeros((1, 0), dtype=np.int64), np.zeros((1, 0))
    reach = _live_reach(nbrs, probs, diffusion_steps, diffusion_runs, seed, into=(srcs, p_in))
    counted = ((1 << m) - 1) << n               # the target nodes' bits
    direct = np.zeros(n)                         # expected target queries entered directly: the tie-break
    np.add.at(direct, srcs.ravel(), p_in.ravel())
    selected, reached = _greedy_cover(reach, list(range(n)), budget, counted, direct, [])
    logger.info("target-aware selection: %d of %d source samples reach %.1f of %d target queries on average "
                "(k=%d, steps=%d, runs=%d)", budget, n, reached, m, k_in, diffusion_steps, diffusion_runs)
    return selected


def random_select(n_items: int, budget: int, seed: int = 0) -> list[int]:
    """Uniform sample without replacement (the no-selection ablation)."""
    _check(n_items, budget)
    return np.random.default_rng(seed).choice(n_items, size=budget, replace=False).tolist()


def kmeans_select(embeddings: np.ndarray, budget: int, *, seed: int = 0, iterations: int = 100) -> list[int]:
    """k-means++ then Lloyd on normalised embeddings; the member nearest each centroid."""
    x = normalise(embeddings)
    n = len(x)
    _check(n, budget)
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(n)]]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, budget):
        total = d2.sum()
        i = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.integers(n))
        centres.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(axis=1))
    c = np.stack(centres)
    assign = None
    for _ in range(iterations):
        dist = (x ** 2).sum(1)[:, None] - 2 * x @ c.T + (c ** 2).sum(1)[None, :]
        new = dist.argmin(axis=1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        for j in range(budget):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(axis=0)
    dist = (x ** 2).sum(1)[:, None] - 2 * x @ c.T + (c ** 2).sum(1)[None, :]
    chosen: list[int] = []
    taken = np.zeros(n, dtype=bool)
    for j in range(budget):
        order = np.argsort(dist[:, j], kind="stable")
        pick = next(int(i) for i in order if not taken[i])
        taken[pick] = True
        chosen.append(pick)
    return chosen


def select_samples(embeddings: np.ndarray | None, budget: int, rule: str = "ideal", *, seed: int = 0,
                   n_items: int | None = None, neighbors: int = 10, diffusion_steps: int = 10,
                   diffusion_runs: int = 10, target_embeddings: np.ndarray | None = None) -> list[int]:
    """Indices of ``budget`` samples chosen by ``rule`` (``SELECTION_RULES``). ``random`` needs
    no embeddings (pass ``n_items``); ``ideal_target`` needs the target's too."""
    if rule == "random":
        n = n_items if n_items is not None else len(embeddings)
        return random_select(n, budget, seed)
    if rule not in SELECTION_RULES:
        raise SelectionError(f"unknown selection rule {rule!r}; use one of {', '.join(SELECTION_RULES)}")
    if embeddings is None:
        raise SelectionError(f"selection rule {rule!r} needs embeddings")
    if rule == "kmeans":
        return kmeans_select(embeddings, budget, seed=seed)
    if rule == "ideal_target":
        if target_embeddings is None:
            raise SelectionError("selection rule 'ideal_target' needs the target's embeddings (give a target)")
        return ideal_target_select(embeddings, target_embeddings, budget, neighbors=neighbors,
                                   diffusion_steps=diffusion_steps, diffusion_runs=diffusion_runs, seed=seed)
    return ideal_select(embeddings, budget, neighbors=neighbors, diffusion_steps=diffusion_steps,
                        diffusion_runs=diffusion_runs, seed=seed)
