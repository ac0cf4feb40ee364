"""``hime enhance`` orchestration: photos in, photos ×scale out with their small faces super-resolved.

For every input photo (files and folders, recursively):

1. **Plan**: where the output goes (``--out DIR`` mirroring relative paths, a ``hime-enhanced/``
   folder beside the library by default, never inside it, or the photo itself with
   ``--in-place``), and whether a previous run already produced an output of the photo with the
   same settings, wherever it went (the ledger; ``--force`` redoes it).
2. **Faces**: from the library index (photos not yet in it are scanned first, an explicit step:
   :func:`~hime_cli.pipeline.sources.scan_missing`), or, with ``--refs DIR``, detected here and
   matched to the faces in DIR.
   A face is enhanced when its detection score is at least ``min_score`` and its size (the side
   of its canonical crop region, :func:`hime_cli.faces.align.region_size`, in input pixels: the
   one face size of ``faces list``, the sheets and the exemplar rule) at most ``max_face``.
3. **Exemplars**: up to ``max_refs`` crops of the same person from other photos
   (:func:`hime_cli.identities.exemplars.ranked_candidates`: resolution, sharpness, detection score,
   pose), never from the same photo nor from a copy of it (a resized export of the same shot);
   of the ``APPEARANCE_POOL`` best, those that look most like the LR face
   (:func:`hime_cli.identities.exemplars.order_by_appearance`).
4. **SR**: each face is cropped with the project's one crop policy (``faces.align.face_crop``):
   at its own size ``L = ceil(region)`` from ``native_min_size`` up (20 px for the ×4 weights),
   else enlarged to the weights' 128 / zoom px; with the default weights the faces under 20 px go
   to the small-face weights, trained on whole 16 px faces (``sr.inference.CropRules``). Faces of
   many photos are batched by network and ``L`` (:mod:`hime_cli.sr.inference`).
5. **Paste-back**: the whole photo is upscaled with Lanczos, each SR face is colour-matched and
   blended in through the inverse crop transform with a feathered mask (:mod:`hime_cli.sr.pasteback`).
6. **Write**: same format and extension, metadata kept (``library.writer``), atomically; in place
   only after a verified backup (``library.backup``).

Nothing here prints: progress goes to a callback, results come back as frozen dataclasses.

The package: :mod:`~hime_cli.pipeline.options` (options, reports, defaults), ``plan`` (step 1),
``ledger`` (re-runs), ``sources`` (step 2), ``stages`` (steps 2-6, one plain function each:
``select_faces → gather_exemplars → super_resolve → paste_faces → write_output``), ``compare``
(before/after sheets) and ``run`` (the orchestration: chunks, progress, errors).
"""

import importlib
from typing import Any

# Names re-exported from the submodules, imported on first use (PEP 562): importing
# ``hime_cli.pipeline.options`` for the CLI's defaults pulls in neither numpy, torch nor the stages.
_EXPORTS = {
    "CHUNK_FACES": "hime_cli.pipeline.options",
    "CHUNK_PHOTOS": "hime_cli.pipeline.options",
    "CHUNK_PIXELS": "hime_cli.pipeline.options",
    "COMPARE_FOLDER": "hime_cli.pipeline.options",
    "DEFAULT_MAX_REFS": "hime_cli.pipeline.options",
    "DEFAULT_MIN_SCORE": "hime_cli.pipeline.options",
    "EnhanceLedger": "hime_cli.pipeline.ledger",
    "EnhanceOptions": "hime_cli.pipeline.options",
    "EnhanceReport": "hime_cli.pipeline.options",
    "Enhancer": "hime_cli.pipeline.run",
    "FaceReport": "hime_cli.pipeline.options",
    "IndexSource": "hime_cli.pipeline.sources",
    "LEDGER_MIGRATIONS": "hime_cli.pipeline.ledger",
    "LEDGER_NAME": "hime_cli.pipeline.ledger",
    "OUTPUT_FOLDER": "hime_cli.pipeline.options",
    "PhotoReport": "hime_cli.pipeline.options",
    "PlannedPhoto": "hime_cli.pipeline.plan",
    "Progress": "hime_cli.pipeline.options",
    "ProgressCallback": "hime_cli.pipeline.options",
    "REFS_MATCH_DISTANCE": "hime_cli.pipeline.options",
    "REF_MIN_FRACTION": "hime_cli.pipeline.options",
    "REF_MIN_GAIN": "hime_cli.pipeline.options",
    "RefsFolderSource": "hime_cli.pipeline.sources",
    "SAME_SHOT_DIFF": "hime_cli.pipeline.options",
    "SCALES": "hime_cli.pipeline.options",
    "TargetFace": "hime_cli.pipeline.sources",
    "default_max_face": "hime_cli.pipeline.options",
    "enhance": "hime_cli.pipeline.run",
    "failure_reason": "hime_cli.pipeline.options",
    "format_plan": "hime_cli.pipeline.plan",
    "plan_outputs": "hime_cli.pipeline.plan",
    "scan_missing": "hime_cli.pipeline.sources",
    "write_contact_sheet": "hime_cli.pipeline.compare",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hime_cli.pipeline' has no attribute {name!r}")


__all__ = [
    "CHUNK_FACES",
    "CHUNK_PHOTOS",
    "CHUNK_PIXELS",
    "COMPARE_FOLDER",
    "DEFAULT_MAX_REFS",
    "DEFAULT_MIN_SCORE",
    "LEDGER_MIGRATIONS",
    "LEDGER_NAME",
    "OUTPUT_FOLDER",
    "REFS_MATCH_DISTANCE",
    "REF_MIN_FRACTION",
    "REF_MIN_GAIN",
    "SAME_SHOT_DIFF",
    "SCALES",
    "EnhanceLedger",
    "EnhanceOptions",
    "EnhanceReport",
    "Enhancer",
    "FaceReport",
    "IndexSource",
    "PhotoReport",
    "PlannedPhoto",
    "Progress",
    "ProgressCallback",
    "RefsFolderSource",
    "TargetFace",
    "default_max_face",
    "enhance",
    "failure_reason",
    "format_plan",
    "plan_outputs",
    "scan_missing",
    "write_contact_sheet",
]
