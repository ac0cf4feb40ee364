"""``hime enhance`` orchestration: photos in, photos ×scale out with their small faces super-resolved.

For every input photo (files and folders, recursively):

1. **Plan**: where the output goes (``--out DIR`` mirroring relative paths, a ``hime-enhanced/``
   folder next to each input root by default, or the photo itself with ``--in-place``), and whether
   a previous run already produced it with the same settings (the ledger; ``--force`` redoes it).
2. **Faces**: from the library index (photos not yet in it are scanned first, an explicit step:
   :func:`~hime_cli.pipeline.sources.scan_missing`), or, with ``--refs DIR``, detected here and
   matched to the faces in DIR.
   A face is enhanced when its detection score is at least ``min_score`` and its size (the larger
   side of its detection box, in input pixels) at most ``max_face``.
3. **Exemplars**: up to ``max_refs`` crops of the same person from other photos
   (:func:`hime_cli.identities.exemplars.ranked_candidates`: resolution, sharpness, detection score,
   pose), never from the same photo nor from a copy of it (a resized export of the same shot);
   of the ``APPEARANCE_POOL`` best, those that look most like the LR face
   (:func:`hime_cli.identities.exemplars.order_by_appearance`).
4. **SR**: each face is cropped with the project's one crop policy (``faces.align``) at
   ``L = max(128 / model_scale, ceil(region))`` pixels; faces of many photos are batched by ``L``
   (:mod:`hime_cli.sr.inference`).
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

from hime_cli.pipeline.compare import write_contact_sheet
from hime_cli.pipeline.ledger import LEDGER_MIGRATIONS, LEDGER_NAME, EnhanceLedger
from hime_cli.pipeline.options import (
    CHUNK_FACES,
    CHUNK_PHOTOS,
    CHUNK_PIXELS,
    COMPARE_FOLDER,
    DEFAULT_MAX_REFS,
    DEFAULT_MIN_SCORE,
    OUTPUT_FOLDER,
    REF_MIN_FRACTION,
    REF_MIN_GAIN,
    REFS_MATCH_DISTANCE,
    SAME_SHOT_DIFF,
    SCALES,
    EnhanceOptions,
    EnhanceReport,
    FaceReport,
    PhotoReport,
    Progress,
    ProgressCallback,
    default_max_face,
    failure_reason,
)
from hime_cli.pipeline.plan import PlannedPhoto, format_plan, plan_outputs
from hime_cli.pipeline.run import Enhancer, enhance
from hime_cli.pipeline.sources import IndexSource, RefsFolderSource, TargetFace, scan_missing

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
