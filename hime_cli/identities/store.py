"""Identities in the library index: incremental clustering and the user's decisions.

The rules that keep identity ids stable and never undo a user (see ``docs/clustering.md``):

1. **Assigned faces never move automatically.** :func:`update_identities` only places faces
   whose ``identity_id`` is NULL (new faces of a scan). They join an existing identity when
   their average-link distance to it is below the threshold, or form new identities among
   themselves (:func:`~hime_cli.identities.cluster.constrained_average_linkage`).
2. **Existing identities never merge automatically**, so a user's split (two identities) can
   never be re-joined by a later scan, and an identity's id never disappears.
3. **User decisions** set ``assigned_by = 'user'`` on every face they place: a merge marks all
   faces of the merged identity, a split marks the faces it moves. ``split --recluster``, the one
   operation that moves faces in bulk, keeps user-placed faces where they are.
4. **Merges are recorded** (``identities.merged_into``); an id that was merged away still
   resolves to the identity it went into, so old ids in scripts keep working.
5. **Deterministic**: faces are processed in id order, new identities are created in the order
   of their smallest face id, so the same index gives the same ids.

A face seen once is an identity of its own (it can be named; ``clusters list --min-faces``
hides them).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

from hime_cli.errors import UsageError
from hime_cli.identities.cluster import (
    DEFAULT_THRESHOLD,
    attach_to_clusters,
    cluster_embeddings,
    constrained_average_linkage,
)
from hime_cli.types import Face

if TYPE_CHECKING:
    from hime_cli.library.index import LibraryIndex

# Thresholds tuned per embedder (Euclidean distance, average linkage); see docs/clustering.md.
DEFAULT_THRESHOLDS: dict[str, float] = {"dlib": DEFAULT_THRESHOLD}
# split --recluster without --threshold: this fraction of the embedder's threshold.
RECLUSTER_TIGHTEN = 0.85
# A poor face (blurry, weak detection: faces.quality) joins a person only this much closer than a
# good face would, and never founds one (tuned on celeba-wild/dev: docs/clustering.md).
POOR_TIGHTEN = 0.85
# `clusters list` shows people with at least this many faces (Immich's default minimum is 3);
# named people are always shown, `--all` shows everyone.
DEFAULT_MIN_FACES = 3


class IdentityNotFoundError(UsageError):
    """The user named an identity id that is not in the index."""


@dataclass(frozen=True)
class ClusterReport:
    """What :func:`update_identities` did."""

    embedder: str
    threshold: float
    new_faces: int  # faces that had no identity
    joined_existing: int  # of those, faces placed into identities that already existed
    new_identities: tuple[int, ...] = field(default_factory=tuple)
    skipped_without_embedding: int = 0
    unplaced_poor: int = 0  # poor faces close to no one: left without an identity ("unsorted")

    @property
    def faces_in_new_identities(self) -> int:
        return self.new_faces - self.joined_existing


@dataclass(frozen=True)
class SplitReport:
    identity_id: int
    new_identities: tuple[int, ...]
    moved_faces: tuple[int, ...]
    kept_faces: int


@dataclass(frozen=True)
class MergeReport:
    identity_id: int
    merged: tuple[int, ...]
    moved_faces: int
    name: str | None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def threshold_for(embedder: str, threshold: float | None = None) -> float:
    """The explicit threshold, else the tuned one for ``embedder`` (a clear error when none)."""
    if threshold is not None:
        if not threshold > 0:
            raise UsageError(f"the clustering threshold must be positive, got {threshold}.")
        return float(threshold)
    if embedder not in DEFAULT_THRESHOLDS:
        raise UsageError(
            f"no tuned clustering threshold for the {embedder!r} embedder.",
            hint="pass --threshold (a Euclidean distance between embeddings), or scan with the dlib embedder.",
        )
    return DEFAULT_THRESHOLDS[embedder]


# ---------------------------------------------------------------------- lookups


def _identity_row(conn: sqlite3.Connection, identity_id: int) -> tuple[int, str | None, int | None] | None:
    row = conn.execute("SELECT id, name, merged_into FROM identities WHERE id = ?", (identity_id,)).fetchone()
    return (int(row[0]), row[1], row[2]) if row else None


def resolve_identity(index: LibraryIndex, identity_id: int) -> int:
    """The live identity an id stands for (following merges); raises when the id is unknown."""
    conn = index.conn
    seen: set[int] = set()
    current = int(identity_id)
    while True:
        row = _identity_row(conn, current)
        if row is None:
            if current == identity_id:
                raise IdentityNotFoundError(
                    f"no identity {identity_id} in the index.", hint="see the ids with `hime clusters list`."
                )
            raise IdentityNotFoundError(f"identity {identity_id} was merged into {current}, which is gone.")
        if row[2] is None or row[2] in seen:
            return current
        seen.add(current)
        current = int(row[2])


def identity_name(index: LibraryIndex, identity_id: int) -> str | None:
    row = _identity_row(index.conn, identity_id)
    return row[1] if row else None


def identity_faces(index: LibraryIndex, identity_id: int, *, with_embeddings: bool = True) -> list[Face]:
    """The faces of a (live) identity, in face-id order."""
    return list(index.iter_faces(with_embeddings=with_embeddings, identity_id=identity_id))


def _assigned_by(conn: sqlite3.Connection, face_ids: Iterable[int] | None = None) -> dict[int, str]:
    if face_ids is None:
        return {int(r[0]): r[1] for r in conn.execute("SELECT id, assigned_by FROM faces")}
    ids = list(face_ids)
    result: dict[int, str] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for r in conn.execute(f"SELECT id, assigned_by FROM faces WHERE id IN ({marks})", chunk):
            result[int(r[0])] = r[1]
    return result


def _live_roots(conn: sqlite3.Connection) -> dict[int, int]:
    """identity id → the live identity it resolves to (itself unless merged)."""
    parent = {int(r[0]): r[1] for r in conn.execute("SELECT id, merged_into FROM identities")}
    roots: dict[int, int] = {}
    for start in parent:
        current, seen = start, set()
        while parent.get(current) is not None and current not in seen:
            seen.add(current)
            current = int(parent[current])  # type: ignore[arg-type]
        roots[start] = current
    return roots


def _new_identity(conn: sqlite3.Connection, name: str | None = None) -> int:
    cursor = conn.execute("INSERT INTO identities (name, created_at) VALUES (?, ?)", (name, _now()))
    return int(cursor.lastrowid)  # type: ignore[arg-type]


def _assign(conn: sqlite3.Connection, face_ids: Sequence[int], identity_id: int, assigned_by: str) -> None:
    conn.executemany(
        "UPDATE faces SET identity_id = ?, assigned_by = ? WHERE id = ?",
        [(identity_id, assigned_by, int(f)) for f in face_ids],
    )


# ---------------------------------------------------------------------- clustering


def judge_unjudged_faces(index: LibraryIndex) -> int:
    """Run the quality gate on faces indexed before it existed (``quality`` NULL); returns how many.

    The verdict comes from the stored score, sharpness, size and embedding, as at scan time. A
    rejected face leaves an identity it was placed in automatically (a user's placement stays).
    """
    from hime_cli.faces.quality import assess

    conn = index.conn
    rows = conn.execute(
        "SELECT f.id, f.score, f.sharpness, f.size, f.embedding, p.embedder FROM faces f"
        " JOIN photos p ON p.id = f.photo_id WHERE f.quality IS NULL"
    ).fetchall()
    updates = []
    for face_id, score, sharp, size, blob, embedder in rows:
        emb = np.frombuffer(blob, dtype=np.float32) if blob is not None else None
        verdict = assess(float(score), float(sharp), float(size), emb, embedder or "")
        updates.append((verdict.level, verdict.reason, verdict.level, int(face_id)))
    with index.transaction() as tx:
        tx.executemany(
            "UPDATE faces SET quality = ?, quality_reason = ?, identity_id = CASE WHEN ? = 'reject'"
            " AND assigned_by = 'auto' THEN NULL ELSE identity_id END WHERE id = ?",
            updates,
        )
    return len(updates)


def update_identities(
    index: LibraryIndex, *, embedder: str = "dlib", threshold: float | None = None
) -> ClusterReport:
    """Place every face without an identity (incremental, stable; see the module docstring).

    Only faces of photos scanned with ``embedder`` take part (embeddings of different models are
    not comparable). Faces without an embedding are left alone and counted. Faces that are not
    faces (the quality gate's reject, the user's "not a face") never take part; poor faces join
    an identity only within ``POOR_TIGHTEN`` × the threshold and never found one.
    """
    thr = threshold_for(embedder, threshold)
    with index.transaction() as conn:
        judge_unjudged_faces(index)
        faces = list(index.iter_faces(with_embeddings=True, embedder=embedder))
        roots = _live_roots(conn)
        usable = [f for f in faces if f.embedding is not None]
        skipped = sum(1 for f in faces if f.embedding is None and f.identity_id is None)
        new = [f for f in usable if f.identity_id is None]
        if not new:
            return ClusterReport(embedder, thr, 0, 0, (), skipped)
        # Repair faces still pointing at a merged-away identity (merge moves them; be safe).
        stale = [
            (roots[f.identity_id], f.id)
            for f in usable
            if f.identity_id is not None and roots.get(f.identity_id, f.identity_id) != f.identity_id
        ]
        conn.executemany("UPDATE faces SET identity_id = ? WHERE id = ?", stale)
        # Poor new faces wait for phase 2; everything else clusters as before.
        poor_new = [f for f in new if f.quality == "poor"]
        main = [f for f in usable if not (f.identity_id is None and f.quality == "poor")]
        groups = np.array(
            [-1 if f.identity_id is None else roots.get(f.identity_id, f.identity_id) for f in main],
            dtype=np.int64,
        )
        if main:
            emb = _comparable(np.stack([f.embedding for f in main]), embedder)
            apart = same_photo_pairs(main, groups)
            if (groups >= 0).any() or apart:
                labels = constrained_average_linkage(emb, groups, thr, cannot_link=apart)
            else:
                labels = cluster_embeddings(emb, thr)  # the same partition; sklearn is lighter here
        else:
            labels = np.zeros(0, dtype=np.int64)
        labels = _attach_poor(main, labels, poor_new, thr * POOR_TIGHTEN, embedder)
        everyone = main + poor_new
        all_groups = np.concatenate([groups, np.full(len(poor_new), -1, dtype=np.int64)])

        # Each cluster holds at most one existing identity (they are kept apart).
        cluster_identity: dict[int, int] = {}
        for label, group in zip(labels.tolist(), all_groups.tolist(), strict=True):
            if group >= 0:
                cluster_identity[label] = group
        joined = 0
        created: list[int] = []
        members: dict[int, list[int]] = {}
        for face, label in zip(everyone, labels.tolist(), strict=True):
            if face.identity_id is None and label >= 0:
                members.setdefault(label, []).append(face.id)
        # Labels are canonical (order of first face id), so iterating in label order creates new
        # identities in the order of their smallest face id: deterministic ids.
        for label in sorted(members):
            face_ids = members[label]
            if label in cluster_identity:
                _assign(conn, face_ids, cluster_identity[label], "auto")
                joined += len(face_ids)
            else:
                identity_id = _new_identity(conn)
                _assign(conn, face_ids, identity_id, "auto")
                created.append(identity_id)
        unplaced = sum(1 for label in labels[len(main) :].tolist() if label < 0)
    return ClusterReport(embedder, thr, len(new), joined, tuple(created), skipped, unplaced)


def _comparable(emb: np.ndarray, embedder: str) -> np.ndarray:
    """Embeddings as the tuned threshold expects them: dlib vectors at unit length (an index from
    before faces.embed scaled them stores raw ones; scaling keeps old and new faces comparable)."""
    emb = np.asarray(emb, dtype=np.float64)
    if embedder != "dlib":
        return emb
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.where(norms > 0, norms, 1.0)


def _attach_poor(
    main: Sequence[Face], labels: np.ndarray, poor: Sequence[Face], threshold: float, embedder: str
) -> np.ndarray:
    """Labels of ``main`` followed by those of the ``poor`` faces (-1: close to no one)."""
    if not poor:
        return labels
    if not main:
        return np.full(len(poor), -1, dtype=np.int64)
    emb = _comparable(np.stack([f.embedding for f in [*main, *poor]]), embedder)  # type: ignore[misc]
    photos_of: dict[int, set[int]] = {}
    for face, label in zip(main, labels.tolist(), strict=True):
        photos_of.setdefault(label, set()).add(face.photo_id)
    forbidden = [
        (len(main) + k, label)
        for k, face in enumerate(poor)
        for label, photos in photos_of.items()
        if face.photo_id in photos
    ]
    combined = np.concatenate([labels, np.full(len(poor), -1, dtype=np.int64)])
    combined = attach_to_clusters(emb, combined, threshold, forbidden)
    # Two poor faces of one photo never join one identity: the first (lower id) stays.
    seen: set[tuple[int, int]] = set()
    for k, face in enumerate(poor):
        label = int(combined[len(main) + k])
        if label >= 0:
            if (face.photo_id, label) in seen:
                combined[len(main) + k] = -1
            seen.add((face.photo_id, label))
    return combined


def same_photo_pairs(faces: Sequence[Face], groups: np.ndarray) -> list[tuple[int, int]]:
    """Index pairs of ``faces`` from one photo, at least one of them unplaced (``groups`` < 0).

    A person appears once in a photo, so two faces of one photo never join one identity
    automatically (in a group shot, small blurry faces of different people can embed close
    together). Faces already together in an identity (a user's decision) are left as they are.
    """
    by_photo: dict[int, list[int]] = {}
    for i, face in enumerate(faces):
        by_photo.setdefault(face.photo_id, []).append(i)
    pairs = []
    for members in by_photo.values():
        for x, a in enumerate(members):
            for b in members[x + 1 :]:
                if groups[a] < 0 or groups[b] < 0:
                    pairs.append((a, b))
    return pairs


# ---------------------------------------------------------------------- user decisions


def name_identity(index: LibraryIndex, identity_id: int, name: str) -> int:
    """Name (or rename) an identity; returns the live id that was named."""
    clean = " ".join(name.split())
    if not clean:
        raise UsageError(
            "the name is empty.", hint='give a name, e.g. `hime clusters name 3 "Ada Lovelace"`.'
        )
    with index.transaction() as conn:
        live = resolve_identity(index, identity_id)
        conn.execute("UPDATE identities SET name = ? WHERE id = ?", (clean, live))
    return live


def identities_named(index: LibraryIndex, name: str) -> list[int]:
    """Live identities carrying ``name`` (case-insensitive)."""
    rows = index.conn.execute(
        "SELECT id FROM identities WHERE merged_into IS NULL AND lower(name) = lower(?) ORDER BY id",
        (" ".join(name.split()),),
    )
    return [int(r[0]) for r in rows]


def merge_identities(index: LibraryIndex, target_id: int, source_ids: Sequence[int]) -> MergeReport:
    """Merge ``source_ids`` into ``target_id`` (a user decision: every face becomes user-placed).

    The target keeps its id and its name; when it has none it takes the first named source's.
    Sources stay in the table with ``merged_into`` set, so their ids still resolve.
    """
    if not source_ids:
        raise UsageError("merge needs at least two identities.", hint="e.g. `hime clusters merge 3 7 12`.")
    with index.transaction() as conn:
        target = resolve_identity(index, target_id)
        sources: list[int] = []
        for sid in source_ids:
            live = resolve_identity(index, sid)
            if live != target and live not in sources:
                sources.append(live)
        name = identity_name(index, target)
        if name is None:
            name = next((n for n in (identity_name(index, s) for s in sources) if n), None)
            if name is not None:
                conn.execute("UPDATE identities SET name = ? WHERE id = ?", (name, target))
        moved = 0
        for source in sources:
            cursor = conn.execute(
                "UPDATE faces SET identity_id = ?, assigned_by = 'user' WHERE identity_id = ?",
                (target, source),
            )
            moved += cursor.rowcount
            conn.execute("UPDATE identities SET merged_into = ? WHERE id = ?", (target, source))
            # Ids that had been merged into the source now resolve straight to the target.
            conn.execute("UPDATE identities SET merged_into = ? WHERE merged_into = ?", (target, source))
        if sources:
            conn.execute("UPDATE faces SET assigned_by = 'user' WHERE identity_id = ?", (target,))
    return MergeReport(target, tuple(sources), moved, name)


def split_faces(index: LibraryIndex, identity_id: int, face_ids: Sequence[int]) -> SplitReport:
    """Move ``face_ids`` out of an identity into a new one (user-placed, never undone)."""
    wanted = list(dict.fromkeys(int(f) for f in face_ids))
    if not wanted:
        raise UsageError("no faces to split off.", hint="e.g. `hime clusters split 3 --faces 41,42`.")
    with index.transaction() as conn:
        live = resolve_identity(index, identity_id)
        members = {f.id for f in identity_faces(index, live, with_embeddings=False)}
        foreign = [f for f in wanted if f not in members]
        if foreign:
            raise UsageError(
                f"face{'s' if len(foreign) > 1 else ''} {', '.join(map(str, foreign))} "
                f"{'are' if len(foreign) > 1 else 'is'} not in identity {live}.",
                hint=f"see its faces with `hime clusters show {live}`.",
            )
        if len(wanted) == len(members):
            raise UsageError(
                f"that is every face of identity {live}; nothing would be left.",
                hint="split off only the faces that are someone else.",
            )
        new_id = _new_identity(conn)
        _assign(conn, wanted, new_id, "user")
    return SplitReport(live, (new_id,), tuple(wanted), len(members) - len(wanted))


def recluster_identity(
    index: LibraryIndex, identity_id: int, *, embedder: str = "dlib", threshold: float | None = None
) -> SplitReport:
    """Split an identity by re-clustering its faces with a tighter threshold.

    Default threshold: ``RECLUSTER_TIGHTEN`` × the embedder's tuned one. Faces the user placed
    stay together in the identity; otherwise the largest sub-cluster (ties: smallest face id)
    keeps the id. Every other sub-cluster becomes a new identity, its faces user-placed.
    """
    thr = threshold if threshold is not None else threshold_for(embedder) * RECLUSTER_TIGHTEN
    thr = threshold_for(embedder, thr)
    with index.transaction() as conn:
        live = resolve_identity(index, identity_id)
        faces = [
            f
            for f in index.iter_faces(with_embeddings=True, identity_id=live, embedder=embedder)
            if f.embedding is not None
        ]
        if len(faces) < 2:
            return SplitReport(live, (), (), len(faces))
        by_user = _assigned_by(conn, [f.id for f in faces])
        groups = np.array([0 if by_user.get(f.id) == "user" else -1 for f in faces], dtype=np.int64)
        emb = _comparable(np.stack([f.embedding for f in faces]), embedder)
        labels = constrained_average_linkage(emb, groups, thr, cannot_link=same_photo_pairs(faces, groups))
        if (groups == 0).any():
            keep = int(labels[int(np.flatnonzero(groups == 0)[0])])
        else:
            counts = Counter(labels.tolist())
            keep = min(counts, key=lambda label: (-counts[label], label))  # canonical: smallest face id
        created: list[int] = []
        moved: list[int] = []
        for label in sorted(set(labels.tolist()) - {keep}):
            ids = [f.id for f, lab in zip(faces, labels.tolist(), strict=True) if lab == label]
            new_id = _new_identity(conn)
            _assign(conn, ids, new_id, "user")
            created.append(new_id)
            moved.extend(ids)
    return SplitReport(live, tuple(created), tuple(moved), len(faces) - len(moved))


# ---------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class IdentitySummary:
    """One row of ``hime clusters list``."""

    id: int
    name: str | None
    faces: int
    photos: int
    exemplars: int  # usable faces (good, not rejected) whose native crop is >= the HR size
    best_face_size: float  # largest native crop region among its faces, in photo pixels
    created_at: str
    hidden: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "faces": self.faces,
            "photos": self.photos,
            "exemplars": self.exemplars,
            "best_face_size": round(self.best_face_size, 1),
            "created_at": self.created_at,
            "hidden": self.hidden,
        }


@dataclass(frozen=True)
class PeopleView:
    """What ``hime clusters list`` shows, and what it leaves out (counted, not listed)."""

    people: list[IdentitySummary]
    fewer_faces: int  # unnamed identities with 2 .. min_faces-1 faces, not listed
    unsorted_faces: int  # faces seen once (unnamed singletons) or close to no one (poor, unplaced)
    hidden: int  # hidden identities, not listed


def list_identities(
    index: LibraryIndex, *, hr_size: float, min_faces: int = 1, include_hidden: bool = True
) -> list[IdentitySummary]:
    """Live identities with at least ``min_faces`` faces, most faces first (then by id)."""
    return [
        s
        for s in _summaries(index, hr_size)
        if s.faces >= max(min_faces, 1) and (include_hidden or not s.hidden)
    ]


def people_view(index: LibraryIndex, *, hr_size: float, min_faces: int = DEFAULT_MIN_FACES) -> PeopleView:
    """People worth a row: not hidden, and named or with at least ``min_faces`` faces.

    Everything else is counted: smaller identities, "unsorted" faces (an unnamed identity of one
    face, or a poor face placed nowhere), hidden identities.
    """
    people, fewer, unsorted, hidden = [], 0, 0, 0
    for s in _summaries(index, hr_size):
        if s.hidden:
            hidden += 1
        elif s.name or s.faces >= min_faces:
            people.append(s)
        elif s.faces == 1:
            unsorted += 1
        else:
            fewer += 1
    unsorted += int(
        index.conn.execute(
            "SELECT COUNT(*) FROM faces WHERE identity_id IS NULL AND rejected = 0 AND quality = 'poor'"
        ).fetchone()[0]
    )
    return PeopleView(people, fewer, unsorted, hidden)


def _summaries(index: LibraryIndex, hr_size: float) -> list[IdentitySummary]:
    from hime_cli.faces.align import region_size

    faces_by_identity: dict[int, list[Face]] = {}
    for face in index.iter_faces(with_embeddings=False):
        if face.identity_id is not None:
            faces_by_identity.setdefault(face.identity_id, []).append(face)
    rows = index.conn.execute(
        "SELECT id, name, created_at, hidden FROM identities WHERE merged_into IS NULL ORDER BY id"
    )
    summaries = []
    for identity_id, name, created_at, hidden in rows:
        faces = faces_by_identity.get(int(identity_id), [])
        if not faces:
            continue
        regions = [region_size(f.landmarks) for f in faces]
        summaries.append(
            IdentitySummary(
                id=int(identity_id),
                name=name,
                faces=len(faces),
                photos=len({f.photo_id for f in faces}),
                exemplars=sum(1 for f, r in zip(faces, regions, strict=True) if f.usable and r >= hr_size),
                best_face_size=max(regions),
                created_at=created_at,
                hidden=bool(hidden),
            )
        )
    summaries.sort(key=lambda s: (-s.faces, s.id))
    return summaries


def hide_identity(index: LibraryIndex, identity_id: int, hidden: bool = True) -> int:
    """Hide (or show again) an identity in ``clusters list``; returns the live id.

    A hidden person stays an identity: new faces of them still join it (so they stay hidden),
    re-scans keep it, names and merges work as before.
    """
    with index.transaction() as conn:
        live = resolve_identity(index, identity_id)
        conn.execute("UPDATE identities SET hidden = ? WHERE id = ?", (int(hidden), live))
    return live


def identity_names(index: LibraryIndex) -> dict[int, str]:
    """identity id → name, for every named identity (merged-away ids map to their live one's name)."""
    names = {int(r[0]): r[1] for r in index.conn.execute("SELECT id, name FROM identities")}
    roots = _live_roots(index.conn)
    return {i: names[roots.get(i, i)] for i in names if names.get(roots.get(i, i))}
