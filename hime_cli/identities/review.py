"""Looking at identities: contact sheets for review and exemplar crops for ``--refs``.

Both read the original photos (orientation applied, through ``library.reader``) and crop faces
with the project's one alignment policy (``faces.align``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hime_cli.errors import HimeError, UsageError
from hime_cli.faces.align import alignment_matrix, region_size, warp_to_crop
from hime_cli.identities.exemplars import DEFAULT_MIN_REGION, exemplar_faces_for_identity
from hime_cli.identities.store import identity_faces, identity_name, resolve_identity
from hime_cli.types import Face

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from hime_cli.library.index import LibraryIndex

log = logging.getLogger(__name__)

EXEMPLAR_COLOUR = (46, 204, 64)  # green outline: usable as an exemplar
TILE_BACKGROUND = (32, 32, 32)
SHEET_BACKGROUND = (245, 245, 245)
DEFAULT_THUMB = 112
DEFAULT_MAX_FACES = 200
# Exported crops: the canonical face region in the middle, the same again around it, so a
# detector run on the file (``--refs DIR``) sees a whole head with context and finds it again.
EXPORT_MARGIN = 2.0
EXPORT_MAX_REGION = 512  # cap of the face region's side in exported crops (pixels)


@dataclass(frozen=True)
class ContactSheet:
    path: Path
    identity_id: int
    faces_shown: int
    faces_total: int
    exemplars: int
    unreadable: int


@dataclass(frozen=True)
class ExportedCrop:
    face_id: int
    photo_path: Path
    path: Path
    region: float  # native face region (photo pixels)
    crop_size: int  # side of the written PNG


class _PhotoCache:
    """Decodes each photo once per sheet/export (faces are grouped by photo)."""

    def __init__(self) -> None:
        self._cache: dict[Path, np.ndarray | None] = {}

    def get(self, path: Path) -> np.ndarray | None:
        if path not in self._cache:
            from hime_cli.library.backup import load_original

            try:
                self._cache[path] = load_original(path).rgb  # the index describes originals
            except HimeError as exc:
                log.warning("cannot read %s: %s", path, exc)
                self._cache[path] = None
        return self._cache[path]


def _order_for_review(faces: Sequence[Face]) -> list[Face]:
    """Faces by distance from the identity's mean embedding: likely mistakes come last."""
    with_emb = [f for f in faces if f.embedding is not None]
    without = [f for f in faces if f.embedding is None]
    if not with_emb:
        return list(faces)
    dims = _common_dim(with_emb)
    with_emb = [f for f in with_emb if f.embedding is not None and f.embedding.shape[0] == dims]
    others = [f for f in faces if f.embedding is not None and f.embedding.shape[0] != dims]
    emb = np.stack([f.embedding for f in with_emb]).astype(np.float64)  # type: ignore[misc]
    dist = np.linalg.norm(emb - emb.mean(axis=0), axis=1)
    order = sorted(range(len(with_emb)), key=lambda i: (dist[i], with_emb[i].id))
    return [with_emb[i] for i in order] + others + without


def _common_dim(faces: Sequence[Face]) -> int:
    """The most common embedding length (an identity merged across embedders mixes them)."""
    dims = [f.embedding.shape[0] for f in faces if f.embedding is not None]
    return max(set(dims), key=lambda d: (dims.count(d), -d))


def _font(size: int):  # -> PIL.ImageFont.ImageFont | FreeTypeFont
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def render_contact_sheet(
    tiles: Sequence[tuple[np.ndarray | None, str, bool]],
    title: str,
    thumb: int = DEFAULT_THUMB,
    columns: int | None = None,
    footer: str | None = None,
    legend: str = "= exemplar (usable reference)   #face id, native size, file   typical faces first, doubtful last",
) -> PILImage.Image:
    """Grid of face thumbnails (float RGB crops, or None for an unreadable photo) with a caption
    under each; ``True`` tiles get a coloured outline; a title and a legend on top."""
    from PIL import Image, ImageDraw

    n = len(tiles)
    cols = columns or max(1, min(10, int(np.ceil(np.sqrt(max(n, 1) * 1.5)))))
    rows = max(1, int(np.ceil(n / cols)))
    pad, border = 8, 4
    caption = 18 + 14 * max((label.count("\n") for _, label, _ in tiles), default=0)  # lines per caption
    cell_w, cell_h = thumb + 2 * border + pad, thumb + 2 * border + caption + pad
    header = 56
    width = max(pad + cols * cell_w, 640)
    height = header + rows * cell_h + pad + (22 if footer else 0)
    sheet = Image.new("RGB", (width, height), SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 6), title, fill=(0, 0, 0), font=_font(18))
    # Legend: a swatch outlined like an exemplar tile.
    lx, ly = pad, 32
    draw.rectangle([lx, ly, lx + 16, ly + 16], outline=EXEMPLAR_COLOUR, width=border, fill=TILE_BACKGROUND)
    draw.text(
        (lx + 24, ly),
        legend,
        fill=(0, 0, 0),
        font=_font(13),
    )
    small = _font(12)
    for k, (crop, label, is_exemplar) in enumerate(tiles):
        r, c = divmod(k, cols)
        x = pad + c * cell_w
        y = header + r * cell_h
        if is_exemplar:
            draw.rectangle(
                [x, y, x + thumb + 2 * border - 1, y + thumb + 2 * border - 1], fill=EXEMPLAR_COLOUR
            )
        if crop is None:
            draw.rectangle(
                [x + border, y + border, x + border + thumb - 1, y + border + thumb - 1], fill=TILE_BACKGROUND
            )
            draw.text(
                (x + border + 6, y + border + thumb // 2 - 6), "unreadable", fill=(220, 220, 220), font=small
            )
        else:
            tile = Image.fromarray((np.clip(crop, 0, 1) * 255 + 0.5).astype(np.uint8))
            if tile.size != (thumb, thumb):
                tile = tile.resize((thumb, thumb))
            sheet.paste(tile, (x + border, y + border))
        draw.multiline_text(
            (x + border, y + thumb + 2 * border + 2), label, fill=(0, 0, 0), font=small, spacing=2
        )
    if footer:
        draw.text((pad, height - 20), footer, fill=(90, 90, 90), font=small)
    return sheet


def _short_name(path: Path, thumb: int) -> str:
    """The photo's file name, shortened in the middle to fit under a thumbnail (~6.5 px a letter)."""
    from hime_cli.library.index import display_path

    name = display_path(path.name)
    room = max(8, int(thumb / 6.5))
    return name if len(name) <= room else name[: room // 2 - 1] + "…" + name[-(room - room // 2) :]


@dataclass(frozen=True)
class OverviewSheet:
    path: Path
    people: int


def write_overview_sheet(
    index: LibraryIndex,
    out: Path | None = None,
    *,
    hr_size: float = DEFAULT_MIN_REGION,
    thumb: int = DEFAULT_THUMB,
    max_people: int = DEFAULT_MAX_FACES,
) -> OverviewSheet:
    """One sheet of every person ``clusters list`` shows: a face each (the best exemplar, else the
    face nearest the identity's average), with id, name and face count under it."""
    from hime_cli.identities.store import people_view

    people = people_view(index, hr_size=hr_size).people[:max_people]
    chosen: list[tuple[Face, str]] = []
    for person in people:
        faces = identity_faces(index, person.id, with_embeddings=True)
        best = exemplar_faces_for_identity(index, person.id, hr_size)
        usable = [f for f in faces if f.usable] or faces
        face = best[0] if best else _order_for_review(usable)[0]
        name = person.name or "-"
        chosen.append((face, f"#{person.id}  {person.faces} faces\n{_short_text(name, thumb)}"))
    photos = _PhotoCache()
    tiles: list[tuple[np.ndarray | None, str, bool]] = []
    for face, label in chosen:
        rgb = photos.get(face.photo_path)
        crop = None if rgb is None else warp_to_crop(rgb, alignment_matrix(face.landmarks, thumb), thumb)
        tiles.append((crop, label, False))
    sheet = render_contact_sheet(
        tiles,
        f"{len(people)} people",
        thumb=thumb,
        legend="#identity id, face count, name   (hime clusters show ID: all faces of one person)",
    )
    path = Path(out) if out is not None else default_sheet_path(0).with_name("people.png")
    if path.suffix.lower() != ".png":
        path = path.with_suffix(".png") if path.suffix else path / "people.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return OverviewSheet(path, len(people))


def _short_text(text: str, thumb: int) -> str:
    room = max(8, int(thumb / 6.5))
    return text if len(text) <= room else text[: room - 1] + "…"


def default_sheet_path(identity_id: int) -> Path:
    from hime_cli.paths import get_paths

    return get_paths().cache_dir / "contact_sheets" / f"identity_{identity_id}.png"


def write_contact_sheet(
    index: LibraryIndex,
    identity_id: int,
    out: Path | None = None,
    *,
    hr_size: float = DEFAULT_MIN_REGION,
    thumb: int = DEFAULT_THUMB,
    max_faces: int = DEFAULT_MAX_FACES,
) -> ContactSheet:
    """Write a PNG contact sheet of an identity's faces (exemplars outlined) and return where."""
    if max_faces < 1:
        raise UsageError("--limit must be at least 1.")
    live = resolve_identity(index, identity_id)
    faces = identity_faces(index, live, with_embeddings=True)
    exemplar_ids = {f.id for f in exemplar_faces_for_identity(index, live, hr_size)}
    ordered = _order_for_review(faces)[:max_faces]
    photos = _PhotoCache()
    tiles: list[tuple[np.ndarray | None, str, bool]] = []
    unreadable = 0
    # Decode photo by photo, not face by face.
    crops: dict[int, np.ndarray | None] = {}
    for face in sorted(ordered, key=lambda f: (str(f.photo_path), f.id)):
        rgb = photos.get(face.photo_path)
        crops[face.id] = (
            None if rgb is None else warp_to_crop(rgb, alignment_matrix(face.landmarks, thumb), thumb)
        )
    for face in ordered:
        crop = crops[face.id]
        unreadable += crop is None
        label = f"#{face.id}  {region_size(face.landmarks):.0f}px\n{_short_name(face.photo_path, thumb)}"
        tiles.append((crop, label, face.id in exemplar_ids))
    name = identity_name(index, live)
    title = f"identity {live}" + (f" - {name}" if name else "") + f": {len(faces)} faces"
    footer = None
    if len(faces) > len(ordered):
        footer = (
            f"showing the {len(ordered)} faces closest to the identity's average of {len(faces)} (--limit)"
        )
    sheet = render_contact_sheet(tiles, title, thumb=thumb, footer=footer)
    path = Path(out) if out is not None else default_sheet_path(live)
    if path.suffix.lower() != ".png":
        path = path.with_suffix(".png") if path.suffix else path / f"identity_{live}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return ContactSheet(
        path, live, len(ordered), len(faces), sum(1 for f in ordered if f.id in exemplar_ids), unreadable
    )


def export_crop_matrix(landmarks: np.ndarray, margin: float = EXPORT_MARGIN) -> tuple[np.ndarray, int]:
    """(photo → crop affine, crop side) for an exported exemplar: the canonical face region at
    native resolution (capped at ``EXPORT_MAX_REGION``) in the middle of a ``margin``× larger crop."""
    region = region_size(landmarks)
    inner = int(round(min(region, EXPORT_MAX_REGION)))
    size = int(round(inner * margin))
    m = alignment_matrix(landmarks, inner)
    m[:, 2] += (size - inner) / 2.0  # centre the face region in the larger crop
    return m, size


def export_exemplars(
    index: LibraryIndex,
    identity_id: int,
    out_dir: Path,
    *,
    hr_size: float = DEFAULT_MIN_REGION,
    limit: int | None = None,
) -> tuple[list[ExportedCrop], list[tuple[Face, str]]]:
    """Write the identity's exemplar faces as aligned PNG crops with margin (one per photo, best
    first); returns (written crops, (face, reason) for those that failed)."""
    from PIL import Image

    live = resolve_identity(index, identity_id)
    chosen = exemplar_faces_for_identity(index, live, hr_size, one_per_photo=True)[:limit]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A previous export of this identity is replaced, not mixed with this one (only files
    # named the way this function names them are removed).
    for old in out_dir.glob(f"identity{live}_[0-9][0-9][0-9]_face*.png"):
        old.unlink()
    photos = _PhotoCache()
    written: list[ExportedCrop] = []
    failed: list[tuple[Face, str]] = []
    for rank, face in enumerate(chosen, 1):
        rgb = photos.get(face.photo_path)
        if rgb is None:
            failed.append((face, "the photo cannot be read (moved or deleted? re-run `hime scan`)"))
            continue
        m, size = export_crop_matrix(face.landmarks)
        crop = warp_to_crop(rgb, m, size)
        path = out_dir / f"identity{live}_{rank:03d}_face{face.id}.png"
        Image.fromarray((crop * 255.0 + 0.5).astype(np.uint8)).save(path, format="PNG")
        written.append(ExportedCrop(face.id, face.photo_path, path, region_size(face.landmarks), size))
    return written, failed
