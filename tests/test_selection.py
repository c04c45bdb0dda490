"""Sample selection: determinism per seed, density and diversity, refusals."""

import numpy as np
import pytest

from cast_vllm.method.selection import (
    SelectionError, ideal_select, kmeans_select, knn_graph, random_select, select_samples,
)


def clusters(sizes=(60, 25, 10, 5), dim=32, seed=0, spread=0.05):
    """Tight clusters of different sizes; returns points and each point's cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    perm = rng.permutation(len(labels))
    return x[perm], labels[perm]


@pytest.mark.parametrize("rule", ["ideal", "random", "kmeans"])
def test_deterministic_per_seed(rule):
    x, _ = clusters()
    a = select_samples(x, 8, rule, seed=3)
    b = select_samples(x, 8, rule, seed=3)
    assert a == b and len(set(a)) == 8 and all(0 <= i < len(x) for i in a)
    others = {tuple(select_samples(x, 8, rule, seed=s)) for s in range(4, 9)}
    assert len(others | {tuple(a)}) > 1, "the seed must matter"


def test_knn_graph_weights():
    x, _ = clusters()
    nbrs, probs = knn_graph(x, 5)
    assert nbrs.shape == probs.shape == (100, 5)
    assert not (nbrs == np.arange(100)[:, None]).any(), "no self loops"
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    sims = (x[nbrs] * x[:, None]).sum(-1)       # rough check: neighbours come from the same cluster
    assert (sims > 0).mean() > 0.9


def test_ideal_starts_dense_then_spreads():
    x, labels = clusters()
    picked = ideal_select(x, 4, neighbors=5, seed=0)
    assert labels[picked[0]] == 0, "first pick is in the densest (largest) cluster"
    assert len({labels[i] for i in picked}) >= 3, "later picks cover other clusters"


def test_kmeans_one_per_cluster():
    x, labels = clusters(sizes=(30, 30, 30, 30))
    picked = kmeans_select(x, 4, seed=0)
    assert sorted(labels[picked].tolist()) == [0, 1, 2, 3]


def test_refusals():
    x, _ = clusters()
    with pytest.raises(SelectionError, match="cannot select 200 samples from a pool of 100"):
        select_samples(x, 200, "ideal")
    with pytest.raises(SelectionError, match="unknown selection rule"):
        select_samples(x, 2, "best")
    with pytest.raises(SelectionError, match="needs embeddings"):
        select_samples(None, 2, "kmeans")
    with pytest.raises(SelectionError, match="NaN"):
        select_samples(np.full((5, 3), np.nan), 2, "ideal")
    assert random_select(10, 10, seed=1) != list(range(10)) and sorted(random_select(10, 10, seed=1)) == list(range(10))


def test_target_aware_selection_follows_the_target():
    """Moving the target moves the picks: most target queries near cluster k -> first pick from
    k, where plain IDEAL would start in the same place every time. The target carries a large
    offset of its own (another prompt format), which per-set centring removes."""
    x, labels = clusters(sizes=(30, 30, 30, 30), seed=2, spread=0.3)
    rng = np.random.default_rng(0)
    firsts = []
    for k in range(4):
        members = x[labels == k]
        target = members[rng.choice(len(members), 10)] + 0.05 * rng.normal(size=(10, x.shape[1]))
        # other clusters' points as background so centring keeps the cluster structure
        background = np.concatenate([x[labels == j][:3] for j in range(4) if j != k])
        target = np.concatenate([target, background]) + 5.0
        picked = select_samples(x, 2, "ideal_target", seed=0, target_embeddings=target)
        firsts.append(int(labels[picked[0]]))
    assert firsts == [0, 1, 2, 3]


def test_target_aware_refusals():
    x, _ = clusters()
    with pytest.raises(SelectionError, match="needs the target's embeddings"):
        select_samples(x, 2, "ideal_target")
    with pytest.raises(SelectionError, match="differ in width"):
        select_samples(x, 2, "ideal_target", target_embeddings=np.zeros((4, 3)))
    with pytest.raises(SelectionError, match="NaN"):
        select_samples(x, 2, "ideal_target", target_embeddings=np.full((4, x.shape[1]), np.nan))
