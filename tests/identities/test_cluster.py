from __future__ import annotations

import numpy as np
import pytest

from hime_cli.identities.cluster import canonical_labels, cluster_embeddings, constrained_average_linkage


def blobs(seed: int, n_people: int = 6, dim: int = 16, spread: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Well separated synthetic 'people': centres ~1.4 apart, faces within ~0.3 of their centre."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_people, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = rng.integers(1, 9, size=n_people)
    truth = np.repeat(np.arange(n_people), sizes)
    emb = centres[truth] + spread * rng.normal(size=(len(truth), dim))
    order = rng.permutation(len(truth))
    return emb[order], truth[order]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(canonical_labels(a), canonical_labels(b)))


def test_canonical_labels_order_and_noise() -> None:
    assert canonical_labels([5, 5, -1, 2, 5, -1, 2]).tolist() == [0, 0, 1, 2, 0, 3, 2]


@pytest.mark.parametrize("algorithm", ["agglomerative", "dbscan"])
def test_recovers_separated_people(algorithm: str) -> None:
    emb, truth = blobs(1)
    labels = cluster_embeddings(emb, 0.6, algorithm=algorithm)
    assert same_partition(labels, truth)


def test_threshold_controls_merging() -> None:
    emb = np.array([[0.0, 0.0], [0.5, 0.0], [3.0, 0.0]])
    assert cluster_embeddings(emb, 0.6).tolist() == [0, 0, 1]
    assert cluster_embeddings(emb, 0.4).tolist() == [0, 1, 2]
    assert cluster_embeddings(emb, 10.0).tolist() == [0, 0, 0]


def test_average_linkage_differs_from_single() -> None:
    # A chain: single linkage joins all three (each step 0.5), average does not (0,1 avg to 2 is 0.75).
    emb = np.array([[0.0], [0.5], [1.0]])
    assert cluster_embeddings(emb, 0.6, linkage="single").tolist() == [0, 0, 0]
    assert cluster_embeddings(emb, 0.6, linkage="average").tolist() == [0, 0, 1]


def test_edge_cases() -> None:
    assert cluster_embeddings(np.zeros((0, 128))).tolist() == []
    assert cluster_embeddings(np.zeros((1, 128))).tolist() == [0]
    with pytest.raises(ValueError):
        cluster_embeddings(np.zeros(5))
    with pytest.raises(ValueError):
        cluster_embeddings(np.full((3, 2), np.nan))
    with pytest.raises(ValueError):
        cluster_embeddings(np.zeros((3, 2)), algorithm="kmeans")


def test_deterministic() -> None:
    emb, _ = blobs(2, spread=0.2)
    a = cluster_embeddings(emb, 0.6)
    b = cluster_embeddings(emb.copy(), 0.6)
    assert a.tolist() == b.tolist()


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("threshold", [0.3, 0.6, 1.0, 1.6])
def test_constrained_without_constraints_equals_sklearn(seed: int, threshold: float) -> None:
    emb, _ = blobs(seed, spread=0.25)  # noisy enough that the threshold matters
    free = -np.ones(len(emb), dtype=int)
    assert (
        constrained_average_linkage(emb, free, threshold).tolist()
        == cluster_embeddings(emb, threshold).tolist()
    )


def test_groups_stay_apart_and_free_items_join_nearest_group() -> None:
    emb = np.array([[0.0, 0.0], [0.1, 0.0], [0.05, 0.05], [0.2, 0.0], [5.0, 5.0], [5.1, 5.0]])
    groups = [0, 1, -1, -1, -1, -1]  # two existing identities, very close to each other
    labels = constrained_average_linkage(emb, groups, threshold=1.0)
    assert labels[0] != labels[1]  # existing identities never merge
    assert labels[2] in (labels[0], labels[1])
    assert labels[3] in (labels[0], labels[1])
    assert labels[4] == labels[5] and labels[4] not in (labels[0], labels[1])  # a new identity


def test_cannot_link_between_a_group_and_a_free_item() -> None:
    emb = np.array([[0.0], [0.05], [0.2]])
    assert constrained_average_linkage(emb, [0, -1, -1], 1.0).tolist() == [0, 0, 0]
    labels = constrained_average_linkage(emb, [0, -1, -1], 1.0, cannot_link=[(2, 0)])
    assert labels.tolist() == [0, 0, 1]


def test_only_groups() -> None:
    assert constrained_average_linkage(np.zeros((3, 2)), [4, 4, 2], 1.0).tolist() == [0, 0, 1]


def test_cannot_link_is_respected() -> None:
    emb = np.array([[0.0], [0.1], [0.2], [0.3]])
    assert constrained_average_linkage(emb, [-1] * 4, 1.0).tolist() == [0, 0, 0, 0]
    labels = constrained_average_linkage(emb, [-1] * 4, 1.0, cannot_link=[(0, 3)])
    assert labels[0] != labels[3]
    assert len(set(labels.tolist())) == 2


def test_cannot_link_inside_a_group_raises() -> None:
    with pytest.raises(ValueError):
        constrained_average_linkage(np.zeros((2, 2)), [0, 0], 1.0, cannot_link=[(0, 1)])


def test_group_average_uses_all_members() -> None:
    # Group 0 = {0.0, 2.0}: average distance to 0.3 is (0.3 + 1.7)/2 = 1.0 -> not below 0.9.
    emb = np.array([[0.0], [2.0], [0.3]])
    assert constrained_average_linkage(emb, [0, 0, -1], 0.9).tolist() == [0, 0, 1]
    assert constrained_average_linkage(emb, [0, 0, -1], 1.1).tolist() == [0, 0, 0]


def naive_constrained(emb: np.ndarray, groups: list[int], threshold: float, cannot_link=()) -> np.ndarray:
    """Reference: the same greedy rule written the slow, obvious way."""
    d = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    clusters: list[tuple[list[int], bool]] = []  # (items, is_group)
    for g in dict.fromkeys(x for x in groups if x >= 0):
        clusters.append(([i for i, x in enumerate(groups) if x == g], True))
    clusters += [([i], False) for i, x in enumerate(groups) if x < 0]
    while True:
        best = None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                (ia, ga), (ib, gb) = clusters[a], clusters[b]
                if ga and gb:
                    continue
                if any((x in ia and y in ib) or (y in ia and x in ib) for x, y in cannot_link):
                    continue
                dist = d[np.ix_(ia, ib)].mean()
                if best is None or dist < best[0]:
                    best = (dist, a, b)
        if best is None or not best[0] < threshold:
            break
        _, a, b = best
        merged = (clusters[a][0] + clusters[b][0], clusters[a][1] or clusters[b][1])
        clusters = [c for k, c in enumerate(clusters) if k not in (a, b)] + [merged]
    labels = np.empty(len(groups), dtype=int)
    for k, (items, _) in enumerate(clusters):
        labels[items] = k
    return canonical_labels(labels)


@pytest.mark.parametrize("seed", range(12))
def test_constrained_matches_naive_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    emb, _ = blobs(seed, n_people=4, dim=8, spread=0.35)
    emb = emb[:24]
    groups = [-1] * len(emb)
    for i in rng.choice(len(emb), size=6, replace=False):  # some items pre-grouped in 3 groups
        groups[i] = int(rng.integers(0, 3))
    free = [i for i, g in enumerate(groups) if g < 0]
    links = [tuple(int(x) for x in rng.choice(free, size=2, replace=False)) for _ in range(2)]
    for threshold in (0.5, 0.9, 1.4):
        expected = naive_constrained(emb, groups, threshold, links)
        got = constrained_average_linkage(emb, groups, threshold, cannot_link=links)
        assert got.tolist() == expected.tolist(), (seed, threshold)
