"""Softmax and top-k over a batch."""

from __future__ import annotations

import numpy as np
import pytest

from service.postprocess import SMALL_ROWS_VALUES, rank, softmax, top_k


def test_softmax_rows_are_probabilities_matching_the_definition():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [-5.0, 10.0, 2.5]], dtype=np.float32)
    probabilities = softmax(logits)
    expected = np.exp(logits.astype(np.float64)) / np.exp(logits.astype(np.float64)).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-12)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-12)


def test_softmax_is_stable_for_huge_logits():
    probabilities = softmax(np.array([[1000.0, 1001.0], [-1000.0, -1000.0]]))
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities[0], [1 / (1 + np.e), np.e / (1 + np.e)])
    np.testing.assert_allclose(probabilities[1], [0.5, 0.5])


def test_softmax_rejects_a_single_vector():
    with pytest.raises(ValueError, match="batch, classes"):
        softmax(np.zeros(3))


def test_top_k_is_sorted_highest_first_per_row():
    scores = np.array([[0.1, 0.5, 0.2, 0.2], [0.7, 0.1, 0.15, 0.05]])
    indices, values = top_k(scores, 3)
    assert indices.tolist() == [[1, 2, 3], [0, 2, 1]]
    np.testing.assert_allclose(values, [[0.5, 0.2, 0.2], [0.7, 0.15, 0.1]])


def test_top_k_breaks_ties_by_lower_index():
    indices, _ = top_k(np.full((1, 5), 0.2), 5)
    assert indices.tolist() == [[0, 1, 2, 3, 4]]


def test_top_k_of_all_classes_is_a_permutation():
    rng = np.random.default_rng(0)
    scores = softmax(rng.normal(size=(8, 10)))
    indices, values = top_k(scores, 10)
    for row in range(8):
        assert sorted(indices[row].tolist()) == list(range(10))
        assert np.all(np.diff(values[row]) <= 0)


@pytest.mark.parametrize("k", [0, 5])
def test_top_k_refuses_k_out_of_range(k):
    with pytest.raises(ValueError, match="between 1 and 4"):
        top_k(np.zeros((2, 4)), k)


@pytest.mark.parametrize("shape", [(1, 10), (3, 7), (1, 1000), (40, 10)])
def test_rank_gives_the_same_labels_and_scores_on_either_path(shape):
    """Small outputs are ranked in plain Python, large ones with numpy: the same answer, ties included."""
    rng = np.random.default_rng(sum(shape))
    logits = rng.normal(size=shape).astype(np.float32)
    logits[:, 1] = logits[:, 0]  # a tie
    labels = [f"class-{i}" for i in range(shape[1])]
    k = min(5, shape[1])
    expected_indices, expected_scores = top_k(softmax(logits), k)
    ranked = rank(logits, k, labels=labels)
    assert (logits.size <= SMALL_ROWS_VALUES) == (shape[0] * shape[1] <= SMALL_ROWS_VALUES)
    assert [[label.index for label in row] for row in ranked] == expected_indices.tolist()
    assert all(label.label == labels[label.index] for row in ranked for label in row)
    np.testing.assert_allclose([[label.score for label in row] for row in ranked], expected_scores, rtol=1e-12)


def test_rank_refuses_k_out_of_range_on_either_path():
    for classes in (10, 1000):
        with pytest.raises(ValueError, match="k must be between 1 and"):
            rank(np.zeros((1, classes), np.float32), classes + 1, labels=[str(i) for i in range(classes)])
