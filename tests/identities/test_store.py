from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hime_cli.errors import UsageError
from hime_cli.identities.exemplars import exemplar_faces_for_identity
from hime_cli.identities.store import (
    IdentityNotFoundError,
    identities_named,
    list_identities,
    merge_identities,
    name_identity,
    recluster_identity,
    resolve_identity,
    split_faces,
    threshold_for,
    update_identities,
)
from hime_cli.library.index import LibraryIndex
from tests.identities.synthetic import add_photo, assigned_by, face_embedding, face_identities, person_centres


@pytest.fixture
def index(tmp_path: Path):
    with LibraryIndex.open(tmp_path / "index.sqlite3") as idx:
        yield idx


def add_people(
    index: LibraryIndex, counts: list[int], seed: int = 0, prefix: str = "p"
) -> dict[int, list[int]]:
    """One photo per face; returns person number -> face ids."""
    centres = person_centres(len(counts), seed)
    rng = np.random.default_rng(seed + 100)
    faces: dict[int, list[int]] = {}
    for person, count in enumerate(counts):
        for k in range(count):
            faces.setdefault(person, []).extend(
                add_photo(index, f"{prefix}{person}_{k}.jpg", [face_embedding(centres[person], rng)])
            )
    return faces


def partition(index: LibraryIndex, face_ids: list[int]) -> set[int | None]:
    ids = face_identities(index)
    return {ids[f] for f in face_ids}


def test_first_clustering_groups_people(index: LibraryIndex) -> None:
    people = add_people(index, [4, 3, 1])
    report = update_identities(index)
    assert report.new_faces == 8 and report.joined_existing == 0
    assert len(report.new_identities) == 3  # the lone face is an identity of its own
    identity_sets = [partition(index, ids) for ids in people.values()]
    assert all(len(s) == 1 and None not in s for s in identity_sets)
    assert len(set().union(*identity_sets)) == 3
    # Created in the order of each cluster's smallest face id.
    assert [next(iter(s)) for s in identity_sets] == list(report.new_identities)


def test_rescan_is_a_no_op_and_new_faces_join_existing(index: LibraryIndex) -> None:
    people = add_people(index, [3, 3])
    update_identities(index)
    before = face_identities(index)
    again = update_identities(index)
    assert again.new_faces == 0 and again.new_identities == ()
    assert face_identities(index) == before

    # New photos: two of person 0, one of a new person 2 (same centres: seed 0 gives person 0/1 again).
    centres = person_centres(3, 0)
    rng = np.random.default_rng(7)
    new0 = add_photo(index, "new0a.jpg", [face_embedding(centres[0], rng)])
    new0 += add_photo(index, "new0b.jpg", [face_embedding(centres[0], rng)])
    stranger = add_photo(index, "stranger.jpg", [face_embedding(person_centres(1, 99)[0], rng)])
    report = update_identities(index)
    after = face_identities(index)
    assert all(after[f] == before[f] for f in before)  # nobody moved
    assert {after[f] for f in new0} == {before[people[0][0]]}
    assert report.joined_existing == 2 and len(report.new_identities) == 1
    assert after[stranger[0]] == report.new_identities[0]


def test_same_input_same_ids(tmp_path: Path) -> None:
    results = []
    for run in range(2):
        with LibraryIndex.open(tmp_path / f"i{run}.sqlite3") as idx:
            add_people(idx, [3, 2, 2, 1])
            update_identities(idx)
            results.append(face_identities(idx))
    assert results[0] == results[1]


def test_existing_identities_never_merge_even_when_close(index: LibraryIndex) -> None:
    people = add_people(index, [3])
    update_identities(index)
    (original,) = partition(index, people[0])
    split = split_faces(index, original, people[0][:1])  # the user says: face 1 is someone else
    (new_id,) = split.new_identities
    # More photos of the same person arrive: they may join either, but the split stays.
    centres = person_centres(1, 0)
    rng = np.random.default_rng(3)
    for k in range(4):
        add_photo(index, f"more{k}.jpg", [face_embedding(centres[0], rng)])
    update_identities(index)
    ids = face_identities(index)
    assert ids[people[0][0]] == new_id
    assert {ids[f] for f in people[0][1:]} == {original}
    assert assigned_by(index)[people[0][0]] == "user"


def test_faces_without_embedding_are_skipped(index: LibraryIndex) -> None:
    add_photo(index, "blank.jpg", [None])
    report = update_identities(index)
    assert report.skipped_without_embedding == 1 and report.new_faces == 0


def test_other_embedders_are_not_mixed(index: LibraryIndex) -> None:
    rng = np.random.default_rng(0)
    add_photo(index, "facenet.jpg", [rng.normal(size=512).astype(np.float32)], embedder="facenet")
    add_people(index, [2])
    report = update_identities(index)
    assert report.new_faces == 2
    with pytest.raises(UsageError):
        update_identities(index, embedder="facenet")  # no tuned threshold: must be explicit
    assert update_identities(index, embedder="facenet", threshold=1.0).new_faces == 1


def test_name_merge_and_resolution(index: LibraryIndex) -> None:
    people = add_people(index, [2, 2, 2])
    update_identities(index)
    a, b, c = (next(iter(partition(index, people[p]))) for p in range(3))
    assert name_identity(index, b, "  Ada   Lovelace ") == b
    report = merge_identities(index, a, [b, c])
    assert report.identity_id == a and set(report.merged) == {b, c} and report.moved_faces == 4
    assert report.name == "Ada Lovelace"  # the unnamed target takes the source's name
    assert resolve_identity(index, b) == a and resolve_identity(index, c) == a
    assert partition(index, people[0] + people[1] + people[2]) == {a}
    assert set(assigned_by(index).values()) == {"user"}
    assert identities_named(index, "ada lovelace") == [a]
    # A merge is never undone by re-clustering, and merged ids keep resolving.
    add_people(index, [1], seed=50, prefix="q")
    update_identities(index)
    assert partition(index, people[0] + people[1] + people[2]) == {a}
    # Naming a merged-away id names the identity it went into.
    assert name_identity(index, c, "Ada") == a
    summaries = {s.id: s for s in list_identities(index, hr_size=128)}
    assert summaries[a].name == "Ada" and summaries[a].faces == 6 and b not in summaries


def test_errors(index: LibraryIndex) -> None:
    people = add_people(index, [2, 2])
    update_identities(index)
    a, b = (next(iter(partition(index, people[p]))) for p in range(2))
    with pytest.raises(IdentityNotFoundError) as info:
        resolve_identity(index, 999)
    assert info.value.exit_code == 2 and "999" in info.value.message
    with pytest.raises(UsageError):
        name_identity(index, a, "   ")
    with pytest.raises(UsageError, match="not in identity"):
        split_faces(index, a, people[1][:1])
    with pytest.raises(UsageError, match="every face"):
        split_faces(index, a, people[0])
    with pytest.raises(UsageError):
        merge_identities(index, a, [])
    with pytest.raises(UsageError):
        threshold_for("dlib", -1.0)
    # Nothing changed after the failures.
    assert partition(index, people[0]) == {a} and partition(index, people[1]) == {b}


def test_recluster_splits_two_people_glued_together(index: LibraryIndex) -> None:
    people = add_people(index, [4, 2])
    update_identities(index)
    a, b = (next(iter(partition(index, people[p]))) for p in range(2))
    # Simulate an over-merged auto identity: person 1's faces sit in identity a (automatically).
    index.conn.execute("UPDATE faces SET identity_id = ?, assigned_by = 'auto' WHERE identity_id = ?", (a, b))
    report = recluster_identity(index, a)
    assert report.identity_id == a and len(report.new_identities) == 1
    assert partition(index, people[0]) == {a}  # the larger group keeps the id
    assert partition(index, people[1]) == set(report.new_identities)
    assert all(assigned_by(index)[f] == "user" for f in people[1])


def test_recluster_keeps_user_placed_faces(index: LibraryIndex) -> None:
    people = add_people(index, [2, 4])
    update_identities(index)
    a, b = (next(iter(partition(index, people[p]))) for p in range(2))
    merge_identities(index, a, [b])  # the user merged them on purpose: everything is user-placed
    report = recluster_identity(index, a)
    assert report.new_identities == () and report.kept_faces == 6
    assert partition(index, people[0] + people[1]) == {a}


def test_recluster_user_group_keeps_the_id_even_when_smaller(index: LibraryIndex) -> None:
    people = add_people(index, [2, 4])
    update_identities(index)
    a, b = (next(iter(partition(index, people[p]))) for p in range(2))
    index.conn.execute("UPDATE faces SET identity_id = ? WHERE identity_id = ?", (a, b))
    index.conn.execute(f"UPDATE faces SET assigned_by = 'user' WHERE id IN ({','.join(map(str, people[0]))})")
    report = recluster_identity(index, a)
    assert partition(index, people[0]) == {a}
    assert partition(index, people[1]) == set(report.new_identities)


def test_list_and_exemplars(index: LibraryIndex) -> None:
    centres = person_centres(2, 0)
    rng = np.random.default_rng(0)
    big = [
        add_photo(index, f"big{k}.jpg", [face_embedding(centres[0], rng)], region=256)[0] for k in range(2)
    ]
    small = add_photo(index, "small.jpg", [face_embedding(centres[0], rng)], region=64)
    # One photo with two people.
    pair = add_photo(
        index, "pair.jpg", [face_embedding(centres[0], rng), face_embedding(centres[1], rng)], region=150
    )
    update_identities(index)
    ids = face_identities(index)
    a = ids[big[0]]
    rows = list_identities(index, hr_size=128)
    assert [r.faces for r in rows] == [4, 1]
    top = rows[0]
    assert top.id == a and top.photos == 4 and top.exemplars == 3
    assert top.best_face_size == pytest.approx(256, rel=1e-4)
    assert [r.id for r in list_identities(index, hr_size=128, min_faces=2)] == [a]
    ex = exemplar_faces_for_identity(index, a, hr_size=128)
    assert small[0] not in {f.id for f in ex} and len(ex) == 3
    assert ex[-1].id == pair[0]  # the smallest usable one ranks last (equal sharpness and score)
    assert all(f.identity_id == a for f in ex)


def test_faces_of_one_photo_never_join_one_identity(index: LibraryIndex) -> None:
    centres = person_centres(2, seed=3)
    rng = np.random.default_rng(7)
    # A group shot: three faces whose embeddings are as close as one person's (small, blurry faces).
    group = add_photo(index, "group.jpg", [face_embedding(centres[0], rng) for _ in range(3)])
    solo = add_photo(index, "solo.jpg", [face_embedding(centres[0], rng)])
    update_identities(index)
    ids = face_identities(index)
    assert len({ids[f] for f in group}) == 3  # one person per face of the photo
    assert ids[solo[0]] in {ids[f] for f in group}  # the other photo's face still joins one of them
    # Later faces of that photo (a re-scan found one more) do not join its other faces either.
    more = add_photo(index, "group2.jpg", [face_embedding(centres[0], rng) for _ in range(2)])
    update_identities(index)
    ids = face_identities(index)
    assert ids[more[0]] != ids[more[1]]


def test_recluster_separates_faces_of_one_photo(index: LibraryIndex) -> None:
    centres = person_centres(1, seed=4)
    rng = np.random.default_rng(8)
    group = add_photo(index, "group.jpg", [face_embedding(centres[0], rng) for _ in range(2)])
    update_identities(index)
    a = face_identities(index)[group[0]]
    index.conn.execute("UPDATE faces SET identity_id = ?, assigned_by = 'auto' WHERE id = ?", (a, group[1]))
    report = recluster_identity(index, a)
    assert len(report.new_identities) == 1
    ids = face_identities(index)
    assert ids[group[0]] != ids[group[1]]


def _set_quality(index: LibraryIndex, face_ids: list[int], quality: str | None) -> None:
    with index.transaction() as conn:
        conn.executemany("UPDATE faces SET quality = ? WHERE id = ?", [(quality, f) for f in face_ids])


def test_poor_faces_join_only_closer_and_never_found_a_person(index: LibraryIndex) -> None:
    from hime_cli.identities.store import DEFAULT_MIN_FACES, people_view

    centres = person_centres(3, 7)
    rng = np.random.default_rng(3)
    ann = [add_photo(index, f"ann{k}.jpg", [face_embedding(centres[0], rng, 0.15)])[0] for k in range(3)]
    update_identities(index)
    (ann_id,) = partition(index, ann)
    near = add_photo(index, "near.jpg", [face_embedding(centres[0], rng, 0.15)])[0]  # ~0.2 from Ann
    # Between the poor threshold and the threshold from Ann's faces: a good face would join, a poor one must not.
    from hime_cli.identities.cluster import DEFAULT_THRESHOLD
    from hime_cli.identities.store import POOR_TIGHTEN

    low, high = POOR_TIGHTEN * DEFAULT_THRESHOLD, DEFAULT_THRESHOLD
    ann_emb = np.stack([f.embedding for f in index.iter_faces() if f.id in ann]).astype(np.float64)
    ann_emb /= np.linalg.norm(ann_emb, axis=1, keepdims=True)
    u = np.random.default_rng(11).normal(size=128)

    def mean_distance(step: float) -> float:
        v = centres[0] + step * u / np.linalg.norm(u)
        return float(np.linalg.norm(ann_emb - v / np.linalg.norm(v), axis=1).mean())

    step = next(x for x in np.arange(0.0, 1.0, 0.005) if mean_distance(x) > (low + high) / 2)
    middling = (centres[0] + step * u / np.linalg.norm(u)).astype(np.float32)
    assert low < mean_distance(step) < high
    between = add_photo(index, "between.jpg", [middling])[0]
    loner = add_photo(index, "loner.jpg", [face_embedding(centres[2], rng)])[0]
    _set_quality(index, [near, between, loner], "poor")
    report = update_identities(index)
    ids = face_identities(index)
    assert ids[near] == ann_id
    assert ids[between] is None and ids[loner] is None
    assert report.new_identities == () and report.unplaced_poor == 2  # a poor face founds no one
    view = people_view(index, hr_size=128, min_faces=DEFAULT_MIN_FACES)
    assert [p.id for p in view.people] == [ann_id] and view.unsorted_faces == 2


def test_faces_from_before_the_gate_are_judged_and_junk_leaves(index: LibraryIndex) -> None:
    people = add_people(index, [3])
    update_identities(index)
    (person,) = partition(index, people[0])
    junk = people[0][0]
    with index.transaction() as conn:  # an index from before migration 2: nothing judged yet
        conn.execute("UPDATE faces SET quality = NULL")
        conn.execute("UPDATE faces SET score = 0.72, sharpness = 300 WHERE id = ?", (junk,))
        conn.execute("UPDATE faces SET sharpness = 300 WHERE id != ?", (junk,))
    update_identities(index)
    ids = face_identities(index)
    assert ids[junk] is None and {ids[f] for f in people[0][1:]} == {person}
    quality = dict(index.conn.execute("SELECT id, quality FROM faces"))
    assert quality[junk] == "reject" and {quality[f] for f in people[0][1:]} == {"good"}
    assert junk not in [f.id for f in index.iter_faces()]
