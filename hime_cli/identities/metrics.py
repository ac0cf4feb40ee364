"""Clustering quality metrics: pairwise and BCubed precision / recall / F1.

Both compare a predicted labelling with the truth (e.g. folder names), item by item:

- **Pairwise**: over all unordered pairs of items, a pair is a true positive when both labellings
  put the two items together. Precision = TP / pairs predicted together, recall = TP / pairs truly
  together. Large clusters dominate (pairs grow quadratically).
- **BCubed** (Bagga & Baldwin 1998): per item, precision = share of its predicted cluster that
  shares its true class, recall = share of its true class that lands in its predicted cluster;
  both averaged over items. Every item weighs the same, so singletons and small identities count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PRF:
    precision: float
    recall: float
    f1: float

    def as_dict(self) -> dict[str, float]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1}


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def _check(truth: Sequence[Hashable], predicted: Sequence[Hashable]) -> None:
    if len(truth) != len(predicted):
        raise ValueError(f"truth has {len(truth)} items, predicted has {len(predicted)}")


def _pairs(n: int) -> int:
    return n * (n - 1) // 2


def pairwise_prf(truth: Sequence[Hashable], predicted: Sequence[Hashable]) -> PRF:
    """Pairwise precision, recall and F1 of ``predicted`` against ``truth``.

    When no pair is predicted together precision is 1 (nothing wrong was claimed); when no pair
    is truly together recall is 1 (nothing was missed).
    """
    _check(truth, predicted)
    together_true = sum(_pairs(c) for c in Counter(truth).values())
    together_pred = sum(_pairs(c) for c in Counter(predicted).values())
    tp = sum(_pairs(c) for c in Counter(zip(truth, predicted, strict=True)).values())
    precision = tp / together_pred if together_pred else 1.0
    recall = tp / together_true if together_true else 1.0
    return PRF(precision, recall, _f1(precision, recall))


def bcubed_prf(truth: Sequence[Hashable], predicted: Sequence[Hashable]) -> PRF:
    """BCubed precision, recall and F1 (items weighted equally; F1 of the averaged P and R)."""
    _check(truth, predicted)
    n = len(truth)
    if n == 0:
        return PRF(1.0, 1.0, 1.0)
    class_size = Counter(truth)
    cluster_size = Counter(predicted)
    overlap = Counter(zip(truth, predicted, strict=True))
    precision = sum(overlap[(t, p)] / cluster_size[p] for t, p in zip(truth, predicted, strict=True)) / n
    recall = sum(overlap[(t, p)] / class_size[t] for t, p in zip(truth, predicted, strict=True)) / n
    return PRF(precision, recall, _f1(precision, recall))
