"""One output rule, whatever folder is passed (issue #10, item 5): the default output is never inside
a scanned library, what hime wrote is never indexed (so never an exemplar), and "already done" is
keyed by the source photo and the settings, not by where the output went."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from hime_cli.library.index import LibraryIndex, library_roots
from hime_cli.library.outputs import read_outputs
from hime_cli.library.scan import scan_paths
from hime_cli.pipeline import EnhanceLedger, EnhanceOptions, PlannedPhoto, enhance, plan_outputs
from tests.library.fakes import CentreDetector, MeanColourEmbedder
from tests.test_pipeline import _options, assets, photos, small_astronaut  # noqa: F401 - fixtures


def _library(root: Path) -> Path:
    lib = root / "Photos"
    (lib / "small").mkdir(parents=True)
    Image.fromarray(small_astronaut()).save(lib / "a.jpg", quality=92)
    Image.fromarray(small_astronaut(112)).save(lib / "small" / "b.jpg", quality=92)
    return lib


def _scan(paths: list[Path]) -> list[str]:
    """Scan with the fake detector and embedder; the indexed photos' paths (sorted)."""
    with LibraryIndex.open() as index:
        scan_paths(paths, index, embedder=MeanColourEmbedder(), detector=CentreDetector(), parallel=False)
        return sorted(str(p.path) for p in index.iter_photos())


def _dests(paths: list[Path], **kw) -> dict[str, Path]:
    planned = plan_outputs(paths, EnhanceOptions(**kw), library_roots(), read_outputs())
    return {p.source.name: p.dest for p in planned if isinstance(p, PlannedPhoto)}


def test_the_default_output_is_beside_the_library_whatever_folder_is_passed(tmp_path: Path) -> None:
    lib = _library(tmp_path).resolve()
    # before any scan: beside the folder passed (Photos/small is nobody's library yet)
    assert _dests([lib / "small"])["b.jpg"] == lib / "hime-enhanced" / "small" / "b.jpg"
    _scan([lib])  # Photos is now a library root
    _scan([lib / "a.jpg"])  # a file is no library
    assert library_roots() == [lib]
    beside = tmp_path.resolve() / "hime-enhanced" / "Photos"
    for passed in ([lib / "small"], [lib], [lib / "small" / "b.jpg"]):
        assert _dests(passed)["b.jpg"] == beside / "small" / "b.jpg", passed
    assert _dests([lib / "a.jpg"])["a.jpg"] == beside / "a.jpg"
    # a library inside the library: the outermost root decides
    _scan([lib / "small"])
    assert _dests([lib / "small"])["b.jpg"] == beside / "small" / "b.jpg"
    # never inside any library root; --out is the user's choice
    for dest in _dests([lib / "small"]).values():
        assert lib not in dest.parents
    assert _dests([lib / "small"], out_dir=lib / "mine")["b.jpg"] == lib / "mine" / "b.jpg"


def test_a_scan_never_indexes_what_hime_wrote(tmp_path: Path) -> None:
    """Files hime wrote with --out (in a folder of the user's) and everything in a folder hime
    created are skipped; one an older hime indexed leaves the index; the user's photos stay."""
    lib = _library(tmp_path).resolve()
    (lib / "mine").mkdir()
    Image.fromarray(small_astronaut(120)).save(lib / "mine" / "user.jpg", quality=90)
    shutil.copy(lib / "a.jpg", lib / "mine" / "a.jpg")  # "an output" in the user's folder
    (lib / "created").mkdir()
    shutil.copy(lib / "a.jpg", lib / "created" / "a.jpg")
    shutil.copy(lib / "a.jpg", lib / "created" / "other.jpg")
    every = _scan([lib])
    assert str(lib / "mine" / "a.jpg") in every  # indexed before hime recorded it

    ledger = EnhanceLedger()
    ledger.expect(lib / "mine" / "a.jpg", "s", "src", "dest")
    ledger.record_folder(lib / "created")
    ledger.close()
    assert _scan([lib]) == sorted(str(lib / p) for p in ("a.jpg", "mine/user.jpg", "small/b.jpg"))
    # and a folder run of hime enhance never takes them as inputs
    assert set(_dests([lib])) == {"a.jpg", "user.jpg", "b.jpg"}


def test_enhance_small_then_the_library_redoes_nothing_and_outputs_are_never_indexed(
    assets: Path,  # noqa: F811 - fixture
    tmp_path: Path,
) -> None:
    lib = _library(tmp_path).resolve()
    opts = {"refs_dir": assets / "refs"}
    first = enhance([lib / "small"], _options(assets, **opts))
    ((src, dest, status),) = [(p.source.name, p.dest, p.status) for p in first.photos]
    assert (src, status) == ("b.jpg", "done") and dest == lib / "hime-enhanced" / "small" / "b.jpg"

    second = enhance([lib], _options(assets, **opts))
    by_name = {p.source.name: p for p in second.photos}
    assert set(by_name) == {"a.jpg", "b.jpg"}  # hime-enhanced/ is never an input
    assert by_name["a.jpg"].status == "done"
    assert by_name["b.jpg"].status == "skipped" and by_name["b.jpg"].dest == dest
    assert by_name["b.jpg"].reason == f"already enhanced with these settings (the output is {dest})"
    # other settings are other work; a changed source too
    other = enhance([lib / "small"], _options(assets, scale=2, **opts))
    assert [p.status for p in other.photos] == ["done"]
    Image.fromarray(small_astronaut(100)).save(lib / "small" / "b.jpg", quality=92)
    changed = enhance([lib], _options(assets, **opts))
    assert {p.source.name: p.status for p in changed.photos} == {"a.jpg": "skipped", "b.jpg": "done"}

    # --out inside the library: a folder hime creates there is never scanned, so its faces
    # never become exemplars
    inside = enhance([lib], _options(assets, out_dir=lib / "enhanced", force=True, **opts))
    assert {p.status for p in inside.photos} == {"done"} and (lib / "enhanced" / "a.jpg").is_file()
    assert _scan([lib]) == [str(lib / "a.jpg"), str(lib / "small" / "b.jpg")]
    assert np.asarray(Image.open(lib / "enhanced" / "a.jpg")).shape[:2] == (512, 512)


def test_compare_sheets_in_a_folder_hime_created_are_never_indexed(
    assets: Path,  # noqa: F811 - fixture
    tmp_path: Path,
) -> None:
    lib = _library(tmp_path).resolve()
    sheets = lib / "sheets"
    report = enhance(
        [lib / "a.jpg"],
        _options(assets, refs_dir=assets / "refs", compare=True, compare_dir=sheets, write_photos=False),
    )
    assert report.photos[0].compare is not None and report.photos[0].compare.is_file()
    assert sheets in report.photos[0].compare.parents
    assert read_outputs().contains(report.photos[0].compare)
    assert _scan([lib]) == [str(lib / "a.jpg"), str(lib / "small" / "b.jpg")]
