"""Pure numpy postprocessing over a whole batch: softmax and top-k."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a (batch, classes) array, computed stably in float64; rows sum to 1."""
    values = np.asarray(logits, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"expected logits of shape (batch, classes), got {values.shape}")
    shifted = values - values.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


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
    scores = np.take_along_axis(values, indices, axis=1)
    return indices, scores
