"""Options shared by commands, as ``Annotated`` types: one help text per option, and defaults
(given where a command uses them) that are the pipeline's own constants
(:mod:`hime_cli.pipeline.options`), so the CLI and the library cannot disagree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

PathsArg = Annotated[
    list[Path], typer.Argument(help="Photos and folders (searched recursively).", show_default=False)
]
ScaleOpt = Annotated[
    int,
    typer.Option(
        "--scale",
        "-s",
        help="Upscaling factor of the whole photo: 1, 2, 4 or 8 (1: restore faces, keep the size).",
    ),
]
MaxFaceOpt = Annotated[
    float | None,
    typer.Option(
        "--max-face",
        help="Enhance faces up to this size (crop region side, input pixels). "
        "Default: 180 at ×1, 108 at ×2 and ×4, 54 at ×8 (measured: see docs/enhance.md).",
        show_default=False,
    ),
]
MinScoreOpt = Annotated[float, typer.Option("--min-score", help="Minimum face detection score.")]
MaxRefsOpt = Annotated[int, typer.Option("--max-refs", help="Exemplars per face (0: none).")]
RefsOpt = Annotated[
    Path | None,
    typer.Option(
        "--refs",
        help="Folder of photos of the person: used as exemplars instead of the library index; "
        "the face most like them is enhanced in each photo.",
        show_default=False,
    ),
]
AllFacesOpt = Annotated[bool, typer.Option("--all-faces", help="With --refs: enhance every small face.")]
HrSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--hr-size",
        help="References need a face region of at least this many px. Default: relative to the "
        "face (its SR crop, L·scale, preferred; twice its own region to fill; docs/enhance.md).",
        show_default=False,
    ),
]
AllPhotosOpt = Annotated[
    bool,
    typer.Option(
        "--all-photos",
        help="Also upscale photos with no face to enhance (by default they are skipped: a plain "
        "resize adds bytes, not detail).",
    ),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights",
        help="Model weights: a registered NAME (`hime models list`) or a .safetensors PATH, run on "
        "every face (the default runs faces under 20 px through weights trained on 16 px faces).",
    ),
]
ExemplarHrSizeOpt = Annotated[
    int,
    typer.Option(
        "--hr-size",
        min=1,
        help="A face is usable as an exemplar when its native crop is at least this many pixels.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
MirrorOpt = Annotated[
    bool,
    typer.Option(
        "--mirror/--no-mirror",
        help="Run the network on each face and on its mirror image and average the two (better "
        "faces, twice the SR time; docs/enhance.md).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (for scripts).")]
