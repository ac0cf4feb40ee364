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

# Average-link Euclidean distance between unit-length, flip-averaged dlib embeddings (faces.embed),
# tuned on celeba-wild/dev (docs/clustering.md). Raw dlib vectors (length ~1.35) used 0.60.
DEFAULT_THRESHOLD = 0.40
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
    ``b`` in each group (``b_groups`` in 0..n_groups-1), in chunks of ``b`` to bound memory."""
    sums = np.zeros((a.shape[0], n_groups), dtype=np.float64)
    order = np.argsort(b_groups, kind="stable")  # group members next to each other
    b, b_groups = b[order], np.asarray(b_groups)[order]
    a_sq = np.einsum("ij,ij->i", a, a)
    chunk = 4096
    for start in range(0, b.shape[0], chunk):
        bc, gc = b[start : start + chunk], b_groups[start : start + chunk]
        b_sq = np.einsum("ij,ij->i", bc, bc)
        d = np.sqrt(np.maximum(a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ bc.T), 0.0))
        runs = np.flatnonzero(np.r_[True, gc[1:] != gc[:-1]])  # first column of each group's run
        sums[:, gc[runs]] += np.add.reduceat(d, runs, axis=1)
    return sums


def constrained_average_linkage(
    emb: np.ndarray,
    initial_groups: Sequence[int] | np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    cannot_link: Iterable[tuple[int, int]] = (),
) -> np.ndarray:
    """Average-linkage agglomeration of free items, next to fixed groups that never merge.

    ``initial_groups[i]`` is a group number (>= 0) for items that start (and stay) together, or
    -1 for a free item. Two different groups never merge (existing identities stay apart); a
    free cluster may join one group. ``cannot_link`` holds pairs of item indices that must end in
    different clusters. Clusters merge greedily, closest pair first (average Euclidean distance
    between their items), while that distance is below ``threshold``. Returns canonical labels.

    Memory is O(M * (M + K)) for M free items and K groups: group-to-group distances are never
    needed, so a library with thousands of identities and a few hundred new faces stays small.
    """
    emb = _as_embeddings(emb)
    n = emb.shape[0]
    groups = np.asarray(initial_groups, dtype=np.int64)
    if groups.shape != (n,):
        raise ValueError(f"initial_groups must have length {n}, got shape {groups.shape}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)

    group_ids = [int(g) for g in dict.fromkeys(groups.tolist()) if g >= 0]
    group_index = {g: k for k, g in enumerate(group_ids)}
    n_groups = len(group_ids)
    free_items = np.flatnonzero(groups < 0)
    m = len(free_items)
    # Cluster numbering: free clusters 0..m-1 (one per free item), groups m..m+K-1.
    item_cluster = np.empty(n, dtype=np.int64)
    for i, g in enumerate(groups.tolist()):
        if g >= 0:
            item_cluster[i] = m + group_index[g]
    item_cluster[free_items] = np.arange(m)
    links = [(int(item_cluster[a]), int(item_cluster[b]), a, b) for a, b in cannot_link]
    for ca, cb, a, b in links:
        if ca == cb:
            raise ValueError(f"cannot-link items {a} and {b} start in the same group")
    if m == 0:
        return canonical_labels(item_cluster)
    sizes = np.bincount(item_cluster, minlength=m + n_groups).astype(np.float64)

    # dsum[i, c]: sum of distances between free cluster i and cluster c (free or group).
    dsum = _pairwise_distance_sums(emb[free_items], emb, item_cluster, m + n_groups)
    forbidden = np.zeros((m, m + n_groups), dtype=bool)
    forbidden[np.arange(m), np.arange(m)] = True
    for ca, cb, _, _ in links:
        if ca < m:
            forbidden[ca, cb] = True
        if cb < m:
            forbidden[cb, ca] = True

    active = np.ones(m + n_groups, dtype=bool)  # free clusters still standing (groups always are)
    parent = np.arange(m + n_groups)

    def row(i: int) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            r = dsum[i] / (sizes[i] * sizes)
        r[forbidden[i] | ~active] = np.inf
        return r

    row_arg = np.empty(m, dtype=np.int64)
    row_min = np.empty(m)
    for i in range(m):
        r = row(i)
        row_arg[i] = int(np.argmin(r))
        row_min[i] = r[row_arg[i]]

    def refresh(rows: np.ndarray) -> None:
        for k in rows:
            r = row(int(k))
            row_arg[k] = int(np.argmin(r))
            row_min[k] = r[row_arg[k]]

    while True:
        i = int(np.argmin(row_min))
        if not row_min[i] < threshold:
            break
        j = int(row_arg[i])
        if j < m:
            # Two free clusters: keep the lower index (deterministic), add the sums.
            i, j = min(i, j), max(i, j)
            keep = i
            dsum[i] += dsum[j]
            dsum[:, i] += dsum[:, j]
            forbidden[i] |= forbidden[j]
            forbidden[:, i] |= forbidden[:, j]
            forbidden[i, i] = True
        else:
            # A free cluster joins a group: the group absorbs it.
            keep = j
            dsum[:, j] += dsum[:, i]
            forbidden[:, j] |= forbidden[:, i]
            j = i
        sizes[keep] += sizes[j]
        active[j] = False
        parent[j] = keep
        row_min[j] = np.inf
        # Rows whose best partner took part in the merge: recompute. No other row can improve:
        # average linkage is reducible, d(k, i+j) is a weighted mean of d(k, i) and d(k, j),
        # never below the smaller (and a forbidden pair stays forbidden).
        stale = (row_arg == keep) | (row_arg == j)
        if keep < m:
            stale[keep] = True
        stale &= active[:m]
        refresh(np.flatnonzero(stale))

    def root(c: int) -> int:
        while parent[c] != c:
            c = int(parent[c])
        return c

    return canonical_labels(np.array([root(int(c)) for c in item_cluster]))


def attach_to_clusters(
    emb: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    threshold: float,
    forbidden: Iterable[tuple[int, int]] = (),
) -> np.ndarray:
    """Place items with ``labels[i] < 0`` into existing clusters, never founding one.

    Each such item joins the cluster (of the items with a label >= 0) with the smallest average
    Euclidean distance to its members, when that distance is below ``threshold`` and the pair
    (item, label) is not in ``forbidden``; otherwise its label stays -1. Used for poor faces
    (blurry, weak): they join a person only at a stricter distance and are never a person of their
    own. Returns a copy of ``labels`` with the placed items filled in.
    """
    emb = _as_embeddings(emb)
    labels = np.asarray(labels, dtype=np.int64).copy()
    free = np.flatnonzero(labels < 0)
    placed = np.flatnonzero(labels >= 0)
    if len(free) == 0 or len(placed) == 0:
        return labels
    n_groups = int(labels[placed].max()) + 1
    sums = _pairwise_distance_sums(emb[free], emb[placed], labels[placed], n_groups)
    counts = np.bincount(labels[placed], minlength=n_groups).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = sums / counts[None, :]
    mean[:, counts == 0] = np.inf
    blocked = {(int(i), int(g)) for i, g in forbidden}
    for row, item in enumerate(free.tolist()):
        for g in np.argsort(mean[row], kind="stable").tolist():
            if not mean[row, g] < threshold:
                break
            if (item, g) not in blocked:
                labels[item] = g
                break
    return labels
