"""Fast, deterministic stand-ins for the face detector and embedder (scan logic tests)."""

from __future__ import annotations

import time

import numpy as np

from hime_cli.types import Box, DetectedFace

_TEMPLATE = np.array([[0.34, 0.40], [0.66, 0.40], [0.50, 0.57], [0.37, 0.74], [0.63, 0.74]], dtype=np.float32)


class CentreDetector:
    """'Finds' one face: the central square of any image at least 32 px on its short side."""

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        self.calls += 1
        h, w = rgb.shape[:2]
        side = min(h, w) // 2
        if side < 16:
            return []
        x0, y0 = (w - side) / 2, (h - side) / 2
        return [
            DetectedFace(
                box=Box(x0, y0, x0 + side, y0 + side),
                landmarks=(_TEMPLATE * side + [x0, y0]).astype(np.float32),
                score=0.9,
            )
        ]


class MeanColourEmbedder:
    """128-d 'embedding': the face box's mean colour, tiled (different images → different vectors)."""

    name = "fake"
    dim = 128

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls = 0
        self.delay_s = delay_s

    def embed(self, rgb: np.ndarray, faces: list[DetectedFace]) -> np.ndarray:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        out = np.zeros((len(faces), self.dim), np.float32)
        for i, face in enumerate(faces):
            b = face.box
            patch = rgb[int(b.y0) : int(b.y1), int(b.x0) : int(b.x1)].reshape(-1, 3).astype(np.float32)
            out[i] = np.tile(patch.mean(0) / 255.0, self.dim // 3 + 1)[: self.dim]
        return out


class CrashingDetector(CentreDetector):
    """Kills its process on any image exactly ``crash_width`` pixels wide (a decoder segfault, say)."""

    def __init__(self, crash_width: int = 77) -> None:
        super().__init__()
        self.crash_width = crash_width

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        if rgb.shape[1] == self.crash_width:
            import os

            os._exit(1)
        return super().detect(rgb)
