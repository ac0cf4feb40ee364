"""Batched super-resolution of aligned face crops with a HIME model.

Crop-size policy (shared with the pipeline): a face whose canonical crop region covers ``R``
input-photo pixels (``faces.align.region_size``) is cropped at ``L = max(L0, ceil(R))`` pixels,
where ``L0 = train_hr / model_scale`` (32 for the ×4 model trained on 128 px faces). A small face is
upsampled to the size the network was trained on; a larger one keeps its native resolution (the
network is fully convolutional, and shrinking it to 32 px would throw detail away). The network
returns ``L * model_scale`` pixels; exemplars are cropped at that size.

Faces of equal ``L`` are batched together (across photos); their reference sets are padded to the
longest one with a ``ref_mask`` (the model never computes an absent reference), and batches are cut
so that their pixel count stays under a memory budget.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hime_cli.errors import ModelError, UsageError
from hime_cli.faces.align import (  # noqa: F401  (the crop policy lives in faces.align; re-exported)
    MAX_UNROTATED_DEG,
    TRAIN_HR_SIZE,
    crop_image,
    face_crop,
    lr_crop_size,
    native_min_size,
    own_crop_size,
    resize_crop,
    upscaled_crop_matrix,
)

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
# Images (LR + refs, counted at the HR size) per batch: ~1.5 M HR pixels keeps a CPU batch under
# ~1 GB of activations with the small model; a GPU takes more.
CPU_BATCH_PIXELS = 1_600_000
CUDA_BATCH_PIXELS = 12_000_000


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is a usage error."""
    import torch

    if device not in DEVICES and not device.startswith("cuda:"):
        raise UsageError(f"unknown device {device!r}.", hint="use --device auto, cpu or cuda")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda was asked for but no CUDA GPU is available.",
            hint="use --device cpu (or auto), or install a CUDA build of torch",
        )
    return device


@dataclass(frozen=True)
class SRJob:
    """One face to super-resolve: the aligned LR crop and its exemplar crops."""

    lr: np.ndarray  # (L, L, 3) float32 RGB in [0, 1]
    refs: tuple[np.ndarray, ...] = field(default_factory=tuple)  # each (L*s, L*s, 3), s = model scale
    route: int = 0  # which network of a RoutedSuperResolver (CropRules.for_region); 0: the main one

    @property
    def size(self) -> int:
        return int(self.lr.shape[0])


@dataclass(frozen=True)
class CropRoute:
    """One network of a run and how a face is cropped for it (``faces.align.face_crop``)."""

    route: int  # SRJob.route
    crop_scale: int  # the zoom the LR crop is sized for (the weights' training zoom)
    model_scale: int  # the network's zoom: its SR crop (and the exemplars) are L · model_scale px


@dataclass(frozen=True)
class CropRules:
    """Which network a face goes to, by its region side (``faces.align.region_size``): faces whose
    own crop side ``ceil(region)`` is under ``small_below`` px to ``small`` (the small-face
    weights), the rest to ``main``."""

    main: CropRoute
    small: CropRoute | None = None
    small_below: float = 0.0

    @classmethod
    def single(cls, model_scale: int, crop_scale: int | None = None) -> CropRules:
        return cls(CropRoute(0, int(crop_scale or model_scale), int(model_scale)))

    def for_region(self, region: float) -> CropRoute:
        if self.small is not None and own_crop_size(region) < self.small_below:
            return self.small
        return self.main


class FaceSuperResolver:
    """Runs a HIME model over many face crops, batched by crop size, under ``torch.inference_mode``."""

    def __init__(
        self,
        model,
        device: str = "cpu",
        batch_pixels: int | None = None,
        name: str = "",
        input_scale: int | None = None,
    ) -> None:
        import torch

        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        # oneDNN runs the convolutions ~1.4x faster in channels_last on CPU (same output).
        self.channels_last = self.device == "cpu"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.scale = int(model.scale)
        # The zoom its input crops are sized for (faces.align.face_crop): the network's own, or the
        # larger one its weights were trained for (a ×4 network trained with --face-scale 8 takes
        # whole 16 px faces, not faces upsampled to 32 px).
        self.input_scale = int(input_scale or self.scale)
        self.name = name or type(model).__name__
        default = CUDA_BATCH_PIXELS if self.device.startswith("cuda") else CPU_BATCH_PIXELS
        self.batch_pixels = int(batch_pixels or default)

    @property
    def rules(self) -> CropRules:
        """Every face to this network, cropped for its weights' zoom."""
        return CropRules.single(self.scale, self.input_scale)

    def _check(self, job: SRJob) -> None:
        size = job.size
        if job.lr.shape != (size, size, 3):
            raise ValueError(f"LR crop must be (L, L, 3), got {job.lr.shape}")
        hr = size * self.scale
        for ref in job.refs:
            if ref.shape != (hr, hr, 3):
                raise ValueError(
                    f"reference crops must be ({hr}, {hr}, 3) for an L={size} face, got {ref.shape}"
                )

    def plan_batches(self, jobs: Sequence[SRJob]) -> list[list[int]]:
        """Indices of ``jobs`` grouped by crop size, cut to the pixel budget (at least one per batch)."""
        by_size: dict[int, list[int]] = defaultdict(list)
        for index, job in enumerate(jobs):
            by_size[job.size].append(index)
        batches: list[list[int]] = []
        for size in sorted(by_size):
            hr_pixels = (size * self.scale) ** 2
            current: list[int] = []
            current_refs = 0
            for index in by_size[size]:
                n_refs = max(current_refs, len(jobs[index].refs))
                # Padded batch: every item holds max(n_refs) reference slots (only present ones run).
                cost = (len(current) + 1) * hr_pixels * (1 + n_refs)
                if current and cost > self.batch_pixels:
                    batches.append(current)
                    current, n_refs = [], len(jobs[index].refs)
                current.append(index)
                current_refs = n_refs
            if current:
                batches.append(current)
        return batches

    def run(self, jobs: Sequence[SRJob], on_batch: Callable[[int], None] | None = None) -> list[np.ndarray]:
        """SR crops (L*s, L*s, 3) float32, not clamped, in the order of ``jobs``.

        ``on_batch(n)`` is called after each batch with the number of faces it held.
        """
        import torch

        for job in jobs:
            self._check(job)
        results: list[np.ndarray | None] = [None] * len(jobs)
        with torch.inference_mode():
            for batch in self.plan_batches(jobs):
                items = [jobs[i] for i in batch]
                lr = torch.from_numpy(np.stack([j.lr for j in items])).permute(0, 3, 1, 2)
                n_refs = max(len(j.refs) for j in items)
                refs = mask = None
                if n_refs:
                    hr = items[0].size * self.scale
                    ref_array = np.zeros((len(items), n_refs, hr, hr, 3), dtype=np.float32)
                    mask_array = np.zeros((len(items), n_refs), dtype=bool)
                    for row, job in enumerate(items):
                        for slot, ref in enumerate(job.refs):
                            ref_array[row, slot] = ref
                            mask_array[row, slot] = True
                    refs = torch.from_numpy(ref_array).permute(0, 1, 4, 2, 3).to(self.device)
                    mask = torch.from_numpy(mask_array).to(self.device)
                lr = lr.to(self.device)
                lr = (
                    lr.contiguous(memory_format=torch.channels_last)
                    if self.channels_last
                    else lr.contiguous()
                )
                out = self.model(lr, refs, mask)
                out_np = out.float().permute(0, 2, 3, 1).cpu().numpy()
                for row, index in enumerate(batch):
                    results[index] = np.ascontiguousarray(out_np[row])
                if on_batch is not None:
                    on_batch(len(batch))
        return [r for r in results if r is not None]


class RoutedSuperResolver:
    """The default weights for most faces and the small-face weights for the smallest
    (:func:`small_face_weights`): each job runs through the network its ``route`` names. The same
    interface as :class:`FaceSuperResolver` (``name``, ``device``, ``scale``, ``rules``, ``run``)."""

    def __init__(self, main: FaceSuperResolver, small: FaceSuperResolver) -> None:
        if main.scale != small.scale:
            raise ValueError(f"the two networks must have one zoom (×{main.scale} and ×{small.scale})")
        self.main, self.small = main, small
        self.device, self.scale, self.input_scale = main.device, main.scale, main.input_scale
        self.rules = CropRules(
            main.rules.main, CropRoute(1, small.input_scale, small.scale), small_face_below(main.input_scale)
        )
        self.name = f"{main.name} (faces under {self.rules.small_below:g} px: {small.name})"

    def run(self, jobs: Sequence[SRJob], on_batch: Callable[[int], None] | None = None) -> list[np.ndarray]:
        """SR crops in the order of ``jobs``, each from the network of its route."""
        unknown = sorted({job.route for job in jobs} - {0, 1})
        if unknown:
            raise ValueError(f"unknown route(s) {unknown}: 0 is the main network, 1 the small-face one")
        results: list[np.ndarray | None] = [None] * len(jobs)
        for route, net in ((0, self.main), (1, self.small)):
            picked = [i for i, job in enumerate(jobs) if job.route == route]
            if picked:
                for i, out in zip(picked, net.run([jobs[i] for i in picked], on_batch), strict=True):
                    results[i] = out
        return [r for r in results if r is not None]


def default_weights_name(scale: int) -> str:
    """Registry name of the model ``enhance`` uses for an output scale: the ×4 network at every scale.

    ×2 and ×8 resample its ``4L`` px output to ``2L`` / ``8L``. At ×8 that beats the ×8 model
    (``--weights hime_small_x8`` still picks it) at every face size measured: face-box gain over
    Lanczos ×8 on celeba-wild dev photos shrunk and saved at JPEG q95 (``benchmarks/bench_enhance.py
    --sweep-only --sweep-scale 8``, 12 faces per size), ×8 model +0.99 / +0.41 / +0.11 / −0.15 dB
    at 16 / 24 / 32 / 40 px faces, ×4 model +1.52 / +1.57 / +1.57 / +1.24 dB; at q75 +0.94 / +0.48 /
    +0.40 / +0.29 against +1.35 / +1.76 / +1.50 / +1.25 (docs/enhance.md, "Scales").

    The faces it would enlarge to its 32 px input (regions under 20 px) go to
    :data:`SMALL_FACE_WEIGHTS` instead, at ×4 and ×8 (:func:`small_face_weights`): the same
    network fine-tuned on whole 16 px faces (``--face-scale 8``), better there and worse from 24 px
    up (docs/training.md, "×8 through the ×4 network"; docs/enhance.md, "The smallest faces").
    """
    del scale  # every scale; kept so callers say which output they want
    return "hime_small_x4"


# The smallest faces, those the default weights only see enlarged to their 32 px input (regions
# under faces.align.native_min_size(4) = 20 px), go to the ×4 network trained on whole 16 px faces
# (``--face-scale 8``), cropped at their own size. Face-box gain over Lanczos on celeba-wild dev
# photos shrunk so the face box is t px (benchmarks/bench_enhance.py --sweep-only, 12 faces per
# size, one pass), default → these weights, dB: ×8 at JPEG q95, t = 12 / 16 / 20: +0.78 → +2.12,
# +1.30 → +1.75, +1.66 → +1.49 (the t = 20 faces have regions over 20 px: not routed); the rest of
# the measurements in docs/enhance.md, "The smallest faces".
SMALL_FACE_WEIGHTS = "hime_small_x4.celeba_wild_real_x8_v2"
SMALL_FACE_SCALES = (4, 8)


def small_face_weights(scale: int, weights: str | None = None) -> str | None:
    """The weights enhance runs on faces under :func:`small_face_below` px, or None: only with
    the default weights (``--weights`` runs the one network it names on every face) and at the
    output scales it was measured better at (:data:`SMALL_FACE_SCALES`)."""
    return SMALL_FACE_WEIGHTS if weights is None and scale in SMALL_FACE_SCALES else None


def small_face_below(main_input_scale: int) -> int:
    """Faces whose own crop is under this (px) go to the small-face weights: exactly those the
    main weights would enlarge to their training input (``faces.align.native_min_size``)."""
    return native_min_size(main_input_scale)


def load_super_resolver(
    weights: str | None,
    scale: int,
    device: str = "auto",
    batch_pixels: int | None = None,
    mirror: bool = True,
) -> FaceSuperResolver | RoutedSuperResolver:
    """Build the model for ``--weights NAME|PATH`` (or the default for ``scale``) and wrap it.

    Missing weights are a :class:`ModelError` naming the command that fetches them; ``--scale 8``
    (like every scale) uses the ×4 network unless ``weights`` names another (see
    :func:`default_weights_name`). ``mirror`` runs it as a :class:`~hime_cli.sr.ensemble.MirrorEnsemble`
    (the face and its mirror image, averaged: twice the SR cost, measured better). With the
    default weights, faces under :func:`small_face_below` px run through
    :func:`small_face_weights` (a :class:`RoutedSuperResolver`).
    """
    resolved = resolve_device(device)
    main = _resolver(weights or default_weights_name(scale), resolved, batch_pixels, mirror)
    small_name = small_face_weights(scale, weights)
    if small_name is None:
        return main
    small = _resolver(small_name, resolved, batch_pixels, mirror)
    return RoutedSuperResolver(main, small)


def _resolver(name: str, device: str, batch_pixels: int | None, mirror: bool) -> FaceSuperResolver:
    from hime_cli.sr.ensemble import MirrorEnsemble
    from hime_cli.sr.registry import create_model

    model, label, entry = _build(name, create_model)
    input_scale = _entry_input_scale(entry)
    if mirror:
        model = MirrorEnsemble(model)  # the label stays the weights' name (reports, compare sheets)
    return FaceSuperResolver(model, device, batch_pixels, label, input_scale)


def crop_rules(weights: str | None, scale: int) -> CropRules:
    """The :class:`CropRules` :func:`load_super_resolver` would give, without loading a model
    (``--dry-run`` plans the same crops). The network's zoom is read from the name: every scale
    uses a ×4 network unless ``weights`` names an ×8 architecture (the part before the tag:
    ``hime_small_x4.celeba_wild_real_x8_v1`` is a ×4 network)."""
    from pathlib import Path

    arch = Path(str(weights or "")).name.split(".")[0]
    model_scale = 8 if scale == 8 and arch.endswith("_x8") else 4
    name = weights or default_weights_name(scale)
    main = CropRoute(0, weights_input_scale(name) or model_scale, model_scale)
    small_name = small_face_weights(scale, weights)
    if small_name is None:
        return CropRules(main)
    small = CropRoute(1, weights_input_scale(small_name) or 4, 4)
    return CropRules(main, small, small_face_below(main.crop_scale))


def weights_input_scale(name: str) -> int | None:
    """The zoom a registered weight was trained and measured for (its registry ``scale``: 8 for
    ``hime_small_x4.celeba_wild_real_x8_v1``, a ×4 network), when it is larger than its network's and a multiple of it;
    ``None`` otherwise (unregistered files, and every weight used at its network's own zoom).
    For ``--dry-run``, which loads no model; :func:`load_super_resolver` reads the entry it loads."""
    from hime_cli.hub import find_entry, is_weights_path, resolve_weights

    try:
        entry = resolve_weights(name).entry if is_weights_path(name) else find_entry(name)
    except ModelError:
        return None
    return _entry_input_scale(entry)


def _entry_input_scale(entry) -> int | None:
    """:func:`weights_input_scale` of a registry entry (``None``: an unregistered file)."""
    if entry is None:
        return None
    match = re.search(r"_x(\d+)$", entry.arch)
    arch_scale = int(match.group(1)) if match else 0
    if arch_scale and entry.scale > arch_scale and entry.scale % arch_scale == 0:
        return int(entry.scale)
    return None


def _build(name: str, create_model) -> tuple[object, str, object]:
    """(model, label, registry entry or None) for a registry name (``arch`` or ``arch.tag``) or a
    ``.safetensors`` path."""
    from pathlib import Path

    from hime_cli.hub import find_entry, is_weights_path, resolve_weights

    if is_weights_path(name):  # the hub's one rule for "is --weights a path"
        resolved = resolve_weights(name)  # logs it; a missing file is its ModelError
        arch = resolved.entry.arch if resolved.entry is not None else _arch_of(resolved.path)
        model = create_model(arch, checkpoint_path=resolved.path)
        return model, Path(name).expanduser().name, resolved.entry
    model = create_model(name, pretrained=True)
    try:
        entry = find_entry(name)
    except ModelError:  # not expected for a name the hub just loaded; then nothing is known of it
        entry = None
    return model, name, entry


def _arch_of(path) -> str:
    """The architecture of an unregistered weight file: the ``arch`` its own metadata records
    (``hime train`` writes it), else the file name's first part."""
    from hime_cli.hub import weights_metadata
    from hime_cli.sr.registry import list_models

    recorded = weights_metadata(path).get("arch")
    if recorded:
        if recorded not in list_models():
            raise ModelError(
                f"{path.name} was written for the architecture {recorded!r}, which this hime does not know.",
                hint=f"architectures: {', '.join(list_models())}; upgrade hime if the weights are newer",
            )
        stem = path.name.split(".")[0]
        if stem != recorded:
            log.info(
                "weights %s: architecture %s (from the file's metadata, not its name)", path.name, recorded
            )
        return recorded
    return _arch_from_filename(path.name)


def _arch_from_filename(filename: str) -> str:
    """``hime_small_x4.celeba_wild_v1.safetensors`` → ``hime_small_x4`` (the registered architecture)."""
    from hime_cli.sr.registry import list_models

    stem = filename.split(".")[0]
    if stem in list_models():
        return stem
    raise ModelError(
        f"cannot tell the architecture of {filename}.",
        hint="name weight files <arch>.<tag>.safetensors, e.g. hime_small_x4.mine.safetensors "
        f"(architectures: {', '.join(list_models())})",
    )
