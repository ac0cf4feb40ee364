"""Planning: every input photo with its destination, its format fallback, or why it cannot be done.

One output rule, whatever folder is passed (issue #10): the default output of a photo is mirrored
under ``hime-enhanced/`` beside the outermost *library root* that holds it (a folder `hime scan`
was given), so ``hime enhance Photos/small`` and ``hime enhance Photos`` put a photo in the same
place, and that place is never inside a scanned library. Files hime wrote (``library.outputs``)
are never planned as inputs of a folder."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hime_cli.errors import UsageError
from hime_cli.library.outputs import HimeOutputs
from hime_cli.pipeline.options import COMPARE_FOLDER, OUTPUT_FOLDER, EnhanceOptions, PhotoReport


@dataclass(frozen=True)
class PlannedPhoto:
    source: Path
    dest: Path
    relative: Path  # mirrored path under the output root (also names the compare sheet)
    compare_root: Path
    out_format: str | None = None  # the format-limit fallback (None: the input's format)
    note: str | None = None  # why the fallback was taken
    out_root: Path | None = None  # the output folder (None in place): recorded when hime creates it


# Formats whose encode is lossless: at --scale 1 they are written as they are (the pixels outside
# the faces come back bit-identical); any other is written as PNG (TIFF for CMYK).
LOSSLESS_FORMATS = frozenset({"PNG", "TIFF"})


def format_plan(source: Path, scale: int) -> tuple[str | None, str | None, str | None]:
    """(fallback format, note, refusal) for a photo's ×``scale`` output, from its header alone.

    When the photo's own format cannot hold the output (HEIC above x265's 142.6 MP, WebP above
    16,383 px a side: ``library.writer.format_limit``), the output is written as JPEG (PNG when
    the photo has alpha) with the same metadata; the note says so. When even that cannot hold
    it, the refusal says why. At ``--scale 1`` (restore faces, keep the size) a lossy format (JPEG,
    HEIC, WebP, AVIF, GIF's palette) is written as PNG (TIFF for CMYK) with the same metadata:
    re-encoding it would change every pixel of the photo, and this mode promises to change only
    the faces. All (None, None, None) when nothing changes or the header is unreadable.
    """
    from hime_cli.library.reader import probe_image
    from hime_cli.library.writer import fallback_format, format_limit

    header = probe_image(source)
    if header is None:
        return None, None, None
    if scale == 1:
        if header.format in LOSSLESS_FORMATS:
            return None, None, None
        fallback = "TIFF" if header.mode == "CMYK" else "PNG"
        return (
            fallback,
            f"--scale 1 leaves every pixel outside the faces as it was, and a {header.format} re-encode "
            f"would change them all: written as {fallback} with the same metadata",
            None,
        )
    width, height = header.width * scale, header.height * scale
    why = format_limit(header.format, width, height)
    if why is None:
        return None, None, None
    fallback = fallback_format(header.format, header.has_alpha)
    if fallback == header.format or format_limit(fallback, width, height):
        return None, None, f"{why}; no other format can hold it either (use a smaller --scale)"
    return fallback, f"{why}: written as {fallback} with the same metadata", None


_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif"}


def _list_photos(paths: Sequence[Path]) -> list[Path]:
    from hime_cli.library.reader import iter_photos

    return list(iter_photos(paths))


def _anchor(root: Path, library_roots: Sequence[Path]) -> Path | None:
    """The outermost library root holding ``root`` (a folder or a photo), None when none does."""
    holding = [r for r in library_roots if r == root or r in root.parents]
    return min(holding, key=lambda r: len(r.parts)) if holding else None


def _output_roots(
    root: Path, options: EnhanceOptions, library_roots: Sequence[Path] = ()
) -> tuple[Path, Path]:
    """(output root, compare-sheet root) for one input root (a folder or a photo), both absolute.

    By default a folder ``D`` goes to ``D/../hime-enhanced/D.name/`` and a photo ``P`` to
    ``P/../hime-enhanced/``; sheets go to the same places under ``hime-compare/``. Inside a library
    root ``R`` (``library_roots``: the folders `hime scan` was given; the outermost that holds the
    input), the input's place in ``R`` is mirrored under ``R/../hime-enhanced/R.name/`` instead:
    the same place for a photo whichever folder of the library is passed, never inside it. With
    ``--out DIR`` the folder's content is mirrored in ``DIR`` and sheets go to ``DIR/hime-compare/``.
    """
    anchor = _anchor(root, library_roots)
    if anchor is not None:
        base = anchor.parent
        tail: Path | None = Path(anchor.name) / (root if root.is_dir() else root.parent).relative_to(anchor)
    else:
        base = root.parent
        tail = Path(root.name) if root.is_dir() else None

    def beside(folder: str) -> Path:
        return base / folder / tail if tail else (base / folder)

    if options.in_place:
        out_root = root if root.is_dir() else root.parent
        compare = beside(COMPARE_FOLDER)
    elif options.out_dir is not None:
        out_root = _real(options.out_dir.expanduser())
        compare = out_root / COMPARE_FOLDER
    else:
        out_root = beside(OUTPUT_FOLDER)
        compare = beside(COMPARE_FOLDER)
    if options.compare_dir is not None:
        compare = _real(options.compare_dir.expanduser())
    return out_root, compare


def plan_outputs(
    paths: Sequence[Path],
    options: EnhanceOptions,
    library_roots: Sequence[Path] = (),
    written: HimeOutputs = HimeOutputs(),
) -> list[PlannedPhoto | PhotoReport]:
    """Every input photo with its destination, in input order; unusable inputs as failed reports.

    ``library_roots`` (real paths) place the default outputs (:func:`_output_roots`); the files
    and folders of ``written`` (what hime wrote) are left out of the folders' photos.

    Folders mirror their relative paths under the output root. Two inputs mapping to one output
    are a usage error (say ``--out`` per input root, or pass the folders separately); one photo
    reached twice (a symlink, or a folder and a file in it) is done once, the repeat is skipped.
    Symlink loops and dangling links are reported as failed photos, under their own names.
    """
    from hime_cli.library.reader import is_image_path

    planned: list[PlannedPhoto | PhotoReport] = []
    seen: dict[Path, Path] = {}  # destination → the source (resolved) that writes it
    first: dict[Path, Path] = {}  # destination → the source as first given
    excluded = [_real(p.expanduser()) for p in (options.out_dir, options.compare_dir) if p is not None]
    for raw in paths:
        root = Path(raw).expanduser()
        if not os.path.lexists(root):
            raise UsageError(
                f"no such file or folder: {root}", hint="check the paths given to `hime enhance`."
            )
        out_root, compare_root = _output_roots(_real(root), options, library_roots)
        if root.is_dir():
            sources = [
                p
                for p in _list_photos([root])
                if not _inside_any(_real(p), excluded) and not written.contains(p)
            ]
        else:
            sources = [root]
        for source in sources:
            if root.is_dir():
                relative = source.relative_to(root)
            else:
                relative = Path(source.name)
            if not root.is_dir() and not is_image_path(source):
                planned.append(PhotoReport(source, None, "failed", "not a supported image file"))
                continue
            broken = _broken_link(source)
            if broken is not None:
                planned.append(PhotoReport(source, None, "failed", broken))
                continue
            dest = source if options.in_place else out_root / relative
            out_format, note, refusal = (
                format_plan(source, options.scale) if options.write_photos else (None, None, None)
            )
            if refusal is not None or (out_format is not None and options.in_place and options.write_photos):
                hint = "use --out" if options.scale == 1 else "use --out, or a smaller --scale"
                reason = refusal or f"{note}; --in-place keeps the format: {hint}"
                planned.append(PhotoReport(source, dest, "failed", reason))
                continue
            if out_format is not None:
                dest = dest.with_suffix(_EXTENSIONS[out_format])
                if _real(dest) in seen or os.path.lexists(source.with_suffix(dest.suffix)):
                    dest = dest.with_name(source.name + _EXTENSIONS[out_format])  # IMG.heic.jpg
            key, real_source = _real(dest), _real(source)
            if key in seen and seen[key] != real_source:
                raise UsageError(
                    f"{seen[key]} and {source} would both be written to {dest}.",
                    hint="enhance them in separate runs or with different --out folders.",
                )
            if not options.in_place and key == real_source:
                raise UsageError(
                    f"the output {dest} is the input itself.", hint="use --in-place to replace originals."
                )
            if key in seen:  # the same photo again (through a symlink, or named twice)
                planned.append(PhotoReport(source, dest, "skipped", f"the same photo as {first[key]}"))
                continue
            seen[key], first[key] = real_source, source
            planned.append(
                PlannedPhoto(
                    source,
                    dest,
                    relative,
                    compare_root,
                    out_format,
                    note,
                    None if options.in_place else out_root,
                )
            )
    return planned


def _real(path: Path) -> Path:
    """``path`` absolute with symlinks resolved; never raises (``Path.resolve`` does on a loop)."""
    return Path(os.path.realpath(path))


def _broken_link(path: Path) -> str | None:
    """Why ``path`` is a symlink that leads nowhere (a loop, or a missing target); None otherwise."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop (the link points back at itself)"
        if exc.errno == errno.ENOENT:
            return f"a dangling symlink (its target {os.readlink(path)} does not exist)"
        return f"cannot follow the symlink: {exc.strerror or exc}"
    return None


def _inside_any(path: Path, folders: Sequence[Path]) -> bool:
    return any(path == f or f in path.parents for f in folders)
