"""Before/after sheets (``--compare``, ``hime compare``): per photo a PNG with a row per enhanced
face (input bicubic | hime | exemplars), and an HTML page linking them."""

from __future__ import annotations

import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hime_cli.faces.align import warp_to_crop
from hime_cli.files import atomic_write_bytes
from hime_cli.pipeline.options import PhotoReport

if TYPE_CHECKING:
    from hime_cli.pipeline.plan import PlannedPhoto
    from hime_cli.pipeline.stages import FaceJob

TILE = 192  # px per tile in a contact sheet
_LABEL_H = 18


def write_sheet(
    plan: PlannedPhoto, rgb: np.ndarray, scale: int, jobs: Sequence[FaceJob], results: Sequence[np.ndarray]
) -> Path:
    """One PNG per photo: a row per enhanced face, input (bicubic) | hime | exemplars.

    ``results``: each face as pasted (colour-matched, blended), through its crop transform.
    """
    rows = []
    for job, result in zip(jobs, results, strict=True):
        size = job.selected.lr_size * scale
        # photo → SR crop: the LR crop's transform magnified s times, sampled bicubic (what "upscale" shows)
        bicubic = warp_to_crop(rgb, np.asarray(job.selected.matrix, np.float64) * scale, size)
        rows.append(
            [("input (bicubic)", bicubic), ("hime", result)]
            + [(f"ref: {e.photo_path.name}", e.crop) for e in job.exemplars.exemplars]
        )
    dest = (plan.compare_root / plan.relative).with_suffix(plan.relative.suffix + ".png")
    write_contact_sheet(rows, dest, title=str(plan.source))
    return dest


def write_compare_index(photos: Sequence[PhotoReport], scale: int) -> Path | None:
    """A small HTML page next to the sheets, linking every photo's sheet."""
    sheets = [p for p in photos if p.compare is not None]
    if not sheets:
        return None
    root = Path(os.path.commonpath([str(p.compare.parent) for p in sheets if p.compare]))
    items = []
    for p in sheets:
        assert p.compare is not None
        rel = os.path.relpath(p.compare, root)
        n = p.faces_enhanced
        items.append(
            f"<figure><figcaption>{html.escape(str(p.source))} — {n} face{'s' if n != 1 else ''}"
            f'</figcaption><img src="{html.escape(rel)}" alt="{html.escape(p.source.name)}"></figure>'
        )
    page = (
        "<!doctype html><meta charset=utf-8><title>hime: before / after</title>"
        "<style>body{font-family:sans-serif;background:#222;color:#eee}img{max-width:100%;"
        "image-rendering:auto}figure{margin:1em 0}</style>"
        f"<h1>hime ×{scale}: input (bicubic) | hime | exemplars</h1>" + "".join(items)
    )
    index = root / "index.html"
    atomic_write_bytes(index, page.encode("utf-8"))
    return index


def write_contact_sheet(
    rows: Sequence[Sequence[tuple[str, np.ndarray]]], dest: Path, title: str = ""
) -> None:
    """Rows of labelled square crops (float RGB) as one PNG; every crop is shown at ``TILE`` px."""
    import cv2
    from PIL import Image, ImageDraw

    n_cols = max(len(r) for r in rows)
    pad = 6
    head = _LABEL_H + pad if title else 0
    width = n_cols * (TILE + pad) + pad
    height = head + len(rows) * (TILE + _LABEL_H + pad) + pad
    sheet = Image.new("RGB", (width, height), (34, 34, 34))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, pad // 2), title[-(width // 7) :], fill=(230, 230, 230))
    for r, row in enumerate(rows):
        y = head + pad + r * (TILE + _LABEL_H + pad)
        for c, (label, crop) in enumerate(row):
            x = pad + c * (TILE + pad)
            interp = cv2.INTER_AREA if crop.shape[0] > TILE else cv2.INTER_CUBIC
            tile = cv2.resize(np.clip(crop, 0, 1).astype(np.float32), (TILE, TILE), interpolation=interp)
            sheet.paste(
                Image.fromarray((np.clip(tile, 0, 1) * 255 + 0.5).astype(np.uint8)), (x, y + _LABEL_H)
            )
            draw.text((x, y + 2), label[: TILE // 7], fill=(230, 230, 230))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    atomic_write_bytes(dest, buffer.getvalue())
