"""Pure numpy postprocessing over a whole batch: softmax, top-k, and the ranked labels the client gets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np


@dataclass(frozen=True)
class ScoredLabel:
    index: int
    label: str
    score: float
    """Softmax probability."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a (batch, classes) array, computed stably in float64; rows sum to 1."""
    values = np.asarray(logits, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"expected logits of shape (batch, classes), got {values.shape}")
    shifted = values - values.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return cast(np.ndarray, exp / exp.sum(axis=1, keepdims=True))


def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the k highest entries of each row, highest first; ties go to the lower index.

    Returns two (batch, k) arrays.
    """
    values = np.asarray(probabilities)
    if values.ndim != 2:
        raise ValueError(f"expected an array of shape (batch, classes), got {values.shape}")
    if not 1 <= k <= values.shape[1]:
        raise ValueError(f"k must be between 1 and {values.shape[1]}, got {k}")
    # A stable sort of the negated scores keeps equal scores in index order.
    indices = np.argsort(-values, axis=1, kind="stable")[:, :k]
    scores = values[np.arange(values.shape[0])[:, None], indices]
    return indices, scores


def rank(logits: np.ndarray, k: int, *, labels: Sequence[str]) -> list[list[ScoredLabel]]:
    """The model contract's postprocess stage: per image, the k most probable labels, highest first."""
    indices, scores = top_k(softmax(logits), k)
    return [
        [ScoredLabel(int(i), labels[int(i)], float(s)) for i, s in zip(row_indices, row_scores, strict=False)]
        for row_indices, row_scores in zip(indices.tolist(), scores.tolist(), strict=False)
    ]
