"""Scan photos into the index, then place their new faces into identities: the one routine behind
``hime scan`` and the scan step of ``hime enhance`` (:func:`hime_cli.pipeline.sources.scan_missing`),
so a face is never indexed without being given a person the same way."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hime_cli.faces.embed import Embedder
    from hime_cli.identities.store import ClusterReport
    from hime_cli.library.index import LibraryIndex
    from hime_cli.library.scan import ProgressCallback, ScanReport


@dataclass(frozen=True)
class ScanResult:
    """What :func:`scan_and_place` did: the scan, and the identity update (None when the scan
    changed no face, so identities were not touched)."""

    scan: ScanReport
    identities: ClusterReport | None


def scan_and_place(
    paths: Iterable[str | os.PathLike[str]],
    index: LibraryIndex,
    *,
    embedder: str | Embedder = "dlib",
    progress: ProgressCallback | None = None,
    force: bool = False,
    threshold: float | None = None,
    before_placing: Callable[[], None] | None = None,
    **scan_options: Any,
) -> ScanResult:
    """Index the photos under ``paths`` (:func:`hime_cli.library.scan.scan_paths`; ``scan_options``
    go to it), then, when faces were added, replaced or moved, place the faces without an identity
    (:func:`hime_cli.identities.store.update_identities` with the scan's embedder and
    ``threshold``). ``before_placing`` is called just before that (a progress message)."""
    from hime_cli.identities.store import update_identities
    from hime_cli.library.scan import scan_paths

    report = scan_paths(paths, index, embedder=embedder, progress=progress, force=force, **scan_options)
    if not report.changed:
        return ScanResult(report, None)
    if before_placing is not None:
        before_placing()
    return ScanResult(report, update_identities(index, embedder=report.embedder, threshold=threshold))
