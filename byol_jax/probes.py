"""Classifiers on frozen features: weighted kNN, logistic regression, and top-k accuracy.

The kNN classifier is the weighted vote of Wu et al. 2018 (InstDisc), the usual monitor of
self-supervised training: the k training features most cosine-similar to a query vote for their
labels with weights ``exp(similarity / T)``. The logistic-regression probe is a multinomial
classifier with L2 penalty on standardised features, fitted full-batch with L-BFGS; its penalty is
chosen on a split of the training features. Both run in JAX on whatever device is the default.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from byol_jax.errors import UserError


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
  """Fraction of rows whose label is among the ``k`` highest scores (ties broken by index)."""
  scores, labels = np.asarray(scores), np.asarray(labels)
  if len(labels) == 0:
    return float("nan")
  k = min(k, scores.shape[1])
  top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=1)))


@functools.partial(jax.jit, static_argnames=("num_classes", "k"))
def _knn_scores_chunk(train_n, train_onehot, queries, *, num_classes, k, temperature):
  del num_classes  # in the shape of train_onehot; static so that each class count compiles once
  q = queries / jnp.maximum(jnp.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
  sims = q @ train_n.T  # [Q, N] cosine similarities
  top_sims, top_idx = jax.lax.top_k(sims, k)
  weights = jnp.exp(top_sims / temperature)  # [Q, k]
  return jnp.einsum("qk,qkc->qc", weights, train_onehot[top_idx])


def knn_scores(
  train_features: np.ndarray,
  train_labels: np.ndarray,
  query_features: np.ndarray,
  num_classes: int,
  *,
  k: int = 200,
  temperature: float = 0.1,
  chunk_size: int = 1024,
) -> np.ndarray:
  """Class scores [Q, C] of the weighted kNN vote: sum of exp(cos / T) over the k nearest.

  Queries are processed in chunks of ``chunk_size`` (the last one padded) so memory stays at
  ``chunk_size x N`` similarities.
  """
  train_labels = np.asarray(train_labels)
  if len(train_labels) == 0 or train_labels.min() < 0:
    raise UserError("kNN needs labelled training features: use a labelled dataset.")
  k = min(k, len(train_labels))
  train = jnp.asarray(train_features, jnp.float32)
  train_n = train / jnp.maximum(jnp.linalg.norm(train, axis=1, keepdims=True), 1e-12)
  onehot = jax.nn.one_hot(jnp.asarray(train_labels), num_classes, dtype=jnp.float32)
  queries = np.asarray(query_features, np.float32)
  out = []
  for start in range(0, len(queries), chunk_size):
    chunk = queries[start : start + chunk_size]
    n = len(chunk)
    if n < chunk_size and len(queries) > chunk_size:
      chunk = np.concatenate([chunk, np.zeros((chunk_size - n, chunk.shape[1]), np.float32)])
    scores = _knn_scores_chunk(
      train_n, onehot, chunk, num_classes=num_classes, k=k, temperature=temperature
    )
    out.append(np.asarray(scores)[:n])
  return np.concatenate(out) if out else np.zeros((0, num_classes), np.float32)


def knn_accuracy(
  train_features: np.ndarray,
  train_labels: np.ndarray,
  query_features: np.ndarray,
  query_labels: np.ndarray,
  num_classes: int,
  *,
  k: int = 200,
  temperature: float = 0.1,
) -> dict[str, float]:
  """Top-1 and top-5 accuracy of the weighted kNN classifier on labelled queries."""
  scores = knn_scores(
    train_features, train_labels, query_features, num_classes, k=k, temperature=temperature
  )
  return dict(
    top1=top_k_accuracy(scores, query_labels, 1), top5=top_k_accuracy(scores, query_labels, 5)
  )


# --------------------------------------------------------------------------------------------
# Logistic regression.


def standardize(train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
  """Scales every feature to zero mean and unit variance with the training statistics."""
  mean = train.mean(axis=0, dtype=np.float64)
  std = train.std(axis=0, dtype=np.float64) + 1e-6
  return tuple(((x - mean) / std).astype(np.float32) for x in (train, *others))


@functools.partial(jax.jit, static_argnames=("num_classes", "iterations"))
def _fit_lbfgs(features, labels, l2, *, num_classes, iterations):
  d = features.shape[1]
  onehot = jax.nn.one_hot(labels, num_classes)

  def loss(params):
    logits = features @ params["w"] + params["b"]
    ce = -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), axis=1))
    return ce + 0.5 * l2 * jnp.sum(jnp.square(params["w"]))

  params = dict(w=jnp.zeros((d, num_classes)), b=jnp.zeros((num_classes,)))
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(_, carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(params, updates), state

  params, _ = jax.lax.fori_loop(0, iterations, step, (params, opt.init(params)))
  return params


def fit_logistic_regression(
  features: np.ndarray,
  labels: np.ndarray,
  num_classes: int,
  l2: float,
  iterations: int = 300,
) -> dict[str, np.ndarray]:
  """Multinomial logistic regression with penalty ``l2/2 |W|^2``, fitted with L-BFGS.

  Returns {"w": [D, C], "b": [C]}; predict with :func:`logistic_scores`.
  """
  params = _fit_lbfgs(
    jnp.asarray(features, jnp.float32),
    jnp.asarray(labels, jnp.int32),
    jnp.float32(l2),
    num_classes=num_classes,
    iterations=iterations,
  )
  return jax.tree.map(np.asarray, params)


def logistic_scores(params: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
  """Logits of a fitted logistic regression."""
  return np.asarray(features, np.float32) @ params["w"] + params["b"]


def linear_probe(
  train_features: np.ndarray,
  train_labels: np.ndarray,
  test_features: np.ndarray,
  test_labels: np.ndarray,
  num_classes: int,
  *,
  l2_grid: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
  val_fraction: float = 0.2,
  seed: int = 0,
  iterations: int = 300,
) -> dict[str, float]:
  """Logistic-regression probe on standardised features, L2 picked on a split of the training set.

  The penalty with the best accuracy on a random ``val_fraction`` of the training features is
  refitted on all of them and tested. Returns top-1/top-5 on the test features and the chosen l2.
  """
  train_features, test_features = standardize(
    np.asarray(train_features, np.float32), np.asarray(test_features, np.float32)
  )
  train_labels = np.asarray(train_labels)
  perm = np.random.default_rng(seed).permutation(len(train_labels))
  n_val = max(1, int(len(perm) * val_fraction))
  val_idx, fit_idx = perm[:n_val], perm[n_val:]
  best_l2, best_acc = l2_grid[0], -1.0
  for l2 in l2_grid:
    params = fit_logistic_regression(
      train_features[fit_idx], train_labels[fit_idx], num_classes, l2, iterations
    )
    acc = top_k_accuracy(logistic_scores(params, train_features[val_idx]), train_labels[val_idx])
    if acc > best_acc:
      best_l2, best_acc = l2, acc
  params = fit_logistic_regression(train_features, train_labels, num_classes, best_l2, iterations)
  scores = logistic_scores(params, test_features)
  return dict(
    top1=top_k_accuracy(scores, test_labels, 1),
    top5=top_k_accuracy(scores, test_labels, 5),
    l2=best_l2,
    val_top1=best_acc,
  )
