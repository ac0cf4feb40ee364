"""`--refs DIR`: photos of someone else in the folder are not taken for the person (#12 follow-up).

The index's dlib embeddings became flip-averaged unit vectors, which shrink distances by ~0.73;
the folder's "same person" bar was still the raw-descriptor 0.60, so most other people passed it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hime_cli.pipeline import REFS_MATCH_DISTANCE, RefsFolderSource


@pytest.mark.data
@pytest.mark.slow
def test_another_persons_photos_in_refs_are_skipped(shared_data: Path, tmp_path: Path) -> None:
    dev = sorted(p for p in (shared_data / "celeba-wild" / "dev").iterdir() if p.is_dir())
    person, other = dev[0], dev[1]
    refs = tmp_path / "refs"
    refs.mkdir()
    mine = sorted(person.glob("*.jpg"))[:5]
    theirs = sorted(other.glob("*.jpg"))[:3]
    for photo in mine + theirs:
        os.symlink(photo, refs / f"{photo.parent.name}_{photo.name}")
    source = RefsFolderSource(refs)
    kept = {f.photo_path.name.split("_")[0] for f in source.ref_faces}
    assert kept == {person.name}, f"faces of {sorted(kept)} kept at distance {REFS_MATCH_DISTANCE}"
    assert len(source.ref_faces) >= 4  # the person's own photos stay
