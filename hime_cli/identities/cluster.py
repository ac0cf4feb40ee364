"""Clustering face embeddings into identities.

Two pure functions:

- :func:`cluster_embeddings` clusters a set of embeddings from scratch with scikit-learn
  (agglomerative clustering by default: average linkage, Euclidean distance, cut at a distance
  threshold tuned on ``celeba-wild/dev`` by ``benchmarks/tune_clustering.py``; see
  ``docs/clustering.md``).
- :func:`constrained_average_linkage` runs the same average-linkage agglomeration but starting
  from given groups (existing identities) and refusing some merges (cannot-link: two existing
  identities, a user's split). It is what keeps identity ids stable when new faces arrive: they
  either join an existing identity or form new ones among themselves, and existing identities
  never merge or lose faces. With no groups and no constraints it gives the same partition as
  :func:`cluster_embeddings` (same algorithm; tested).

Labels are canonical: 0, 1, 2, ... in order of each cluster's first item, so the same input
always gives the same labels. A lone face is its own cluster (so is DBSCAN/HDBSCAN noise):
every face belongs to an identity, so even a person seen once can be named.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

DEFAULT_THRESHOLD = 0.6  # average-link Euclidean distance between dlib embeddings; tuned on dev
DEFAULT_LINKAGE = "average"
ALGORITHMS = ("agglomerative", "dbscan")
LINKAGES = ("average", "complete", "single")


def canonical_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Relabel clusters 0, 1, 2... by order of first appearance; each negative label (noise)
    becomes its own singleton cluster."""
    mapping: dict[int, int] = {}
    result = np.empty(len(labels), dtype=np.int64)
    next_label = 0
    for i, label in enumerate(np.asarray(labels).tolist()):
        if label < 0:
            result[i] = next_label
            next_label += 1
            continue
        if label not in mapping:
            mapping[label] = next_label
            next_label += 1
        result[i] = mapping[label]
    return result


def _as_embeddings(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {emb.shape}")
    if not np.all(np.isfinite(emb)):
        raise ValueError("embeddings contain NaN or inf")
    return emb


def cluster_embeddings(
    emb: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    linkage: str = DEFAULT_LINKAGE,
    algorithm: str = "agglomerative",
) -> np.ndarray:
    """Cluster (N, D) embeddings; returns canonical int labels of length N.

    ``threshold`` is a Euclidean distance: for agglomerative clustering the linkage distance
    below which clusters merge, for DBSCAN ``eps`` (with ``min_samples=1``, i.e. single-linkage
    components). (HDBSCAN has no distance threshold; the benchmark sweeps it separately.)
    """
    emb = _as_embeddings(emb)
    n = emb.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    if algorithm == "agglomerative":
        if linkage not in LINKAGES:
            raise ValueError(f"unknown linkage {linkage!r}; choose one of {', '.join(LINKAGES)}")
        from sklearn.cluster import AgglomerativeClustering

        model = AgglomerativeClustering(
            n_clusters=None, distance_threshold=threshold, linkage=linkage, metric="euclidean"
        )
        labels = model.fit_predict(emb)
    elif algorithm == "dbscan":
        from sklearn.cluster import DBSCAN

        labels = DBSCAN(eps=threshold, min_samples=1, metric="euclidean").fit_predict(emb)
    else:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    return canonical_labels(labels)


def _pairwise_distance_sums(a: np.ndarray, b: np.ndarray, b_groups: np.ndarray, n_groups: int) -> np.ndarray:
    """(len(a), n_groups) sums of Euclidean distances from each row of ``a`` to the rows of
    ``b`` in each group (``b_groups`` in 0..n_groups-1), computed in chunks to bound memory."""
    sums = np.zeros((a.shape[0], n_groups), dtype=np.float64)
    a_sq = np.einsum("ij,ij->i", a, a)
    chunk = 4096
    for start in range(0, b.shape[0], chunk):
        bc = b[start : start + chunk]
        b_sq = np.einsum("ij,ij->i", bc, bc)
        d2 = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ bc.T)
        d = np.sqrt(np.maximum(d2, 0.0))
        onehot = np.zeros((bc.shape[0], n_groups), dtype=np.float64)
        onehot[np.arange(bc.shape[0]), b_groups[start : start + chunk]] = 1.0
        sums += d @ onehot
    return sums


def constrained_average_linkage(
    emb: np.ndarray,
    initial_groups: Sequence[int] | np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    cannot_link: Iterable[tuple[int, int]] = (),
    separate_groups: bool = True,
) -> np.ndarray:
    """Average-linkage agglomeration that starts from fixed groups and respects cannot-links.

    ``initial_groups[i]`` is a group number (>= 0) for items that must start (and stay)
    together, or -1 for a free item. With ``separate_groups`` two different initial groups never
    merge (existing identities stay apart). ``cannot_link`` holds pairs of item indices that must
    end in different clusters. Clusters merge greedily, closest pair first (average Euclidean
    distance between their items), while that distance is below ``threshold``. Returns canonical
    labels: an item's cluster contains at most one initial group.

    Memory is O(C^2) for C = number of initial groups + free items; the distances needed are
    only those from free items to everything (group-to-group distances are never used when
    groups are kept apart).
    """
    emb = _as_embeddings(emb)
    n = emb.shape[0]
    groups = np.asarray(initial_groups, dtype=np.int64)
    if groups.shape != (n,):
        raise ValueError(f"initial_groups must have length {n}, got shape {groups.shape}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)

    # Initial clusters: one per distinct group (ordered by first item), then one per free item.
    group_ids = [int(g) for g in dict.fromkeys(groups.tolist()) if g >= 0]
    group_index = {g: k for k, g in enumerate(group_ids)}
    n_groups = len(group_ids)
    free_items = np.flatnonzero(groups < 0)
    n_clusters = n_groups + len(free_items)
    item_cluster = np.empty(n, dtype=np.int64)
    for i, g in enumerate(groups.tolist()):
        if g >= 0:
            item_cluster[i] = group_index[g]
    item_cluster[free_items] = n_groups + np.arange(len(free_items))
    sizes = np.bincount(item_cluster, minlength=n_clusters).astype(np.float64)

    # Sum of pairwise distances between clusters. Group-to-group sums are only needed when
    # groups may merge.
    dsum = np.zeros((n_clusters, n_clusters), dtype=np.float64)
    if len(free_items):
        free_to_all = _pairwise_distance_sums(emb[free_items], emb, item_cluster, n_clusters)
        dsum[n_groups:, :] = free_to_all
        dsum[:, n_groups:] = free_to_all.T
    if n_groups and not separate_groups:
        grouped = np.flatnonzero(groups >= 0)
        g_to_g = np.zeros((n_groups, n_groups))
        for k in range(n_groups):
            members = np.flatnonzero(item_cluster == k)
            g_to_g[k] = _pairwise_distance_sums(
                emb[members], emb[grouped], item_cluster[grouped], n_groups
            ).sum(0)
        dsum[:n_groups, :n_groups] = g_to_g

    forbidden = np.zeros((n_clusters, n_clusters), dtype=bool)
    np.fill_diagonal(forbidden, True)
    if separate_groups and n_groups:
        forbidden[:n_groups, :n_groups] = True
    for a, b in cannot_link:
        ca, cb = item_cluster[a], item_cluster[b]
        if ca == cb:
            raise ValueError(f"cannot-link items {a} and {b} start in the same group")
        forbidden[ca, cb] = forbidden[cb, ca] = True

    active = np.ones(n_clusters, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        avg = dsum / np.outer(sizes, sizes)
    avg[forbidden] = np.inf
    row_arg = np.argmin(avg, axis=1)
    row_min = avg[np.arange(n_clusters), row_arg]
    parent = np.arange(n_clusters)

    while True:
        i = int(np.argmin(row_min))
        if not row_min[i] < threshold:
            break
        j = int(row_arg[i])
        i, j = min(i, j), max(i, j)  # keep the lower index: deterministic and order-stable
        # Merge j into i (Lance-Williams for average linkage is just adding the sums).
        dsum[i, :] += dsum[j, :]
        dsum[:, i] = dsum[i, :]
        sizes[i] += sizes[j]
        forbidden[i, :] |= forbidden[j, :]
        forbidden[:, i] = forbidden[i, :]
        forbidden[i, i] = True
        active[j] = False
        parent[j] = i
        avg[j, :] = np.inf
        avg[:, j] = np.inf
        row_min[j] = np.inf
        with np.errstate(divide="ignore", invalid="ignore"):
            new_row = dsum[i, :] / (sizes[i] * sizes)
        new_row[forbidden[i, :] | ~active] = np.inf
        avg[i, :] = new_row
        avg[:, i] = new_row
        # Row i changed entirely; other rows changed in columns i and j only.
        row_arg[i] = int(np.argmin(avg[i]))
        row_min[i] = avg[i, row_arg[i]]
        stale = active & ((row_arg == i) | (row_arg == j))
        stale[i] = False
        for k in np.flatnonzero(stale):
            row_arg[k] = int(np.argmin(avg[k]))
            row_min[k] = avg[k, row_arg[k]]
        better = active & (avg[:, i] < row_min)
        better[i] = False
        row_arg[better] = i
        row_min[better] = avg[better, i]

    def root(c: int) -> int:
        while parent[c] != c:
            c = int(parent[c])
        return c

    roots = np.array([root(int(c)) for c in item_cluster])
    return canonical_labels(roots)
