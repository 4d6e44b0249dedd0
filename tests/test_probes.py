"""Frozen-feature classifiers: weighted kNN against a numpy reference, logistic regression."""

import numpy as np
import pytest

from byol_jax import probes
from byol_jax.errors import UserError


def knn_reference(train, train_labels, queries, num_classes, k, temperature):
  """The InstDisc weighted vote written plainly, one query at a time."""
  train = train / np.linalg.norm(train, axis=1, keepdims=True)
  scores = np.zeros((len(queries), num_classes))
  for i, q in enumerate(queries):
    sims = train @ (q / np.linalg.norm(q))
    nearest = np.argsort(-sims, kind="stable")[:k]
    for j in nearest:
      scores[i, train_labels[j]] += np.exp(sims[j] / temperature)
  return scores


def test_knn_matches_numpy_reference():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(5, 16))
  train_labels = rng.integers(0, 5, 300)
  train = centres[train_labels] + rng.normal(scale=1.5, size=(300, 16))
  query_labels = rng.integers(0, 5, 70)
  queries = centres[query_labels] + rng.normal(scale=1.5, size=(70, 16))
  ref = knn_reference(train, train_labels, queries, 5, k=20, temperature=0.1)
  # chunk_size 32 exercises the padded last chunk.
  got = probes.knn_scores(train, train_labels, queries, 5, k=20, temperature=0.1, chunk_size=32)
  np.testing.assert_allclose(got, ref, rtol=1e-4)
  acc = probes.knn_accuracy(train, train_labels, queries, query_labels, 5, k=20, temperature=0.1)
  assert acc["top1"] == pytest.approx(np.mean(ref.argmax(1) == query_labels))
  assert acc["top1"] > 0.5  # well above chance (0.2) on these clusters
  # k larger than the training set uses all of it.
  np.testing.assert_allclose(
    probes.knn_scores(train[:10], train_labels[:10], queries, 5, k=200),
    knn_reference(train[:10], train_labels[:10], queries, 5, 10, 0.1),
    rtol=1e-4,
  )


def test_knn_needs_labels():
  with pytest.raises(UserError, match="labelled"):
    probes.knn_scores(np.ones((3, 2)), np.array([-1, -1, -1]), np.ones((1, 2)), 2)


def test_top_k_accuracy():
  scores = np.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
  labels = np.array([2, 0, 0])
  assert probes.top_k_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
  assert probes.top_k_accuracy(scores, labels, 2) == pytest.approx(2 / 3)
  assert probes.top_k_accuracy(scores, labels, 5) == 1.0


def test_logistic_regression_separates_a_toy_problem():
  rng = np.random.default_rng(1)
  centres = np.array([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
  y = rng.integers(0, 3, 400)
  x = centres[y] + rng.normal(scale=0.5, size=(400, 3)) + 100.0  # offset: standardisation matters
  y_test = rng.integers(0, 3, 200)
  x_test = centres[y_test] + rng.normal(scale=0.5, size=(200, 3)) + 100.0
  result = probes.linear_probe(x, y, x_test, y_test, 3, l2_grid=(1e-4, 1e-2), iterations=100)
  assert result["top1"] == 1.0
  assert result["l2"] in (1e-4, 1e-2)
  params = probes.fit_logistic_regression(*probes.standardize(x)[:1], y, 3, l2=1e-3, iterations=100)
  assert params["w"].shape == (3, 3)
