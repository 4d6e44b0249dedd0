"""Evaluation from checkpoints: linear evaluation, fine-tuning on label subsets, embeddings.

* :func:`linear_eval` is the paper's protocol: the frozen online encoder (BatchNorm in inference
  mode) feeds a linear classifier trained with SGD + Nesterov momentum 0.9, lr = base_lr * batch /
  256 with cosine decay, no weight decay, on random-resized-crop + flip views; test views are
  resized and centre-cropped. Several base learning rates train side by side on the same features
  (one encoder pass per batch); the best on a validation split carved from the training data is
  the one tested.
* :func:`finetune` trains encoder and classifier together on a stratified fraction of the labels
  (the paper's semi-supervised 1% / 10% setting); the chosen examples are saved in the workdir.
* :func:`embed` writes the features of a dataset (e.g. an image folder) to ``.npz``.

These are experiment drivers, like ``train.pretrain``: they read the config. Results are printed,
appended to ``metrics.jsonl`` and written as ``<mode>.json`` in the workdir.

With several processes each reads its own shard of the training, validation and test data; the
classifiers train on the same global batches as one process would, accuracies count the examples
of all processes, and the lr is chosen on those, so every process gets the same results (process 0
writes them).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterator

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from byol_jax import config_base, parallel, run_data, schedules, writers
from byol_jax import encoder as encoder_lib
from byol_jax import features as features_lib
from byol_jax.data import augment, device_augment, pipeline, sources, subsets

# Per-dimension (mean, scale) of features: the classifier reads (features - mean) * scale.
Standardization = tuple[np.ndarray, np.ndarray]

# --------------------------------------------------------------------------------------------
# Data of the evaluations.


def _top_k_hits(scores: np.ndarray, labels: np.ndarray, ks: tuple[int, ...]) -> list[int]:
  """For each k, the number of rows of ``scores`` [N, C] whose label is among the k highest
  (ties broken by index, as in ``probes.top_k_accuracy``)."""
  order = np.argsort(-scores, axis=1, kind="stable")
  return [int(np.sum(np.any(order[:, :k] == labels[:, None], axis=1))) for k in ks]


def global_accuracy(
  scores: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)
) -> tuple[np.ndarray, int]:
  """Top-k accuracies of classifiers over the examples of all processes, and their number.

  ``scores`` [L, N, C] are L classifiers' scores of this process's N examples; returns the
  accuracies [L, len(ks)], equal on every process (the hit counts are summed over processes).
  """
  local = np.array([[*_top_k_hits(s, labels, ks), len(labels)] for s in scores], np.int32)
  parallel.sync_processes("accuracy")
  total = multihost_utils.process_allgather(local).sum(axis=0)
  count = int(total[0, -1])
  if count == 0:
    return np.full([len(scores), len(ks)], np.nan), 0
  return total[:, :-1] / count, count


def _num_steps(config: ml_collections.ConfigDict, num_examples: int) -> int:
  if config.eval.num_steps > 0:
    return int(config.eval.num_steps)
  return max(1, math.ceil(config.eval.num_epochs * num_examples / config.eval.batch_size))


def _train_view(config: ml_collections.ConfigDict) -> augment.AugmentParams | None:
  name = config.eval.train_augment
  if name == "none":
    return None
  return augment.get_preset(name)[0]


def _write_results(workdir: str, mode: str, results: dict, step: int) -> None:
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, f"{mode}.json"), "w") as f:
    json.dump(results, f, indent=2)
  scalars = {k: v for k, v in results.items() if isinstance(v, int | float)}
  writer = writers.MetricWriter(workdir, tensorboard=False)
  writer.write(step, scalars)
  writer.close()


def _sgd(total_steps: int, weight_decay: float) -> optax.GradientTransformation:
  """SGD + Nesterov momentum 0.9 with unit peak lr and cosine decay; scale updates by the lr."""
  sgd = optax.sgd(optax.cosine_decay_schedule(1.0, total_steps), momentum=0.9, nesterov=True)
  if weight_decay > 0:
    return optax.chain(optax.add_decayed_weights(weight_decay), sgd)
  return sgd


# --------------------------------------------------------------------------------------------
# Linear evaluation.


def feature_standardization(features: np.ndarray, eps: float = 1e-6) -> Standardization:
  """Per-dimension (mean, 1 / std) of ``features`` [N, D]; a constant dimension gets scale
  ``1 / sqrt(eps)`` and so stays 0 once shifted."""
  features = np.asarray(features, np.float64)
  mean = features.mean(axis=0)
  scale = 1.0 / np.sqrt(features.var(axis=0) + eps)
  return mean.astype(np.float32), scale.astype(np.float32)


def standardize(features, standardization: Standardization | None):
  """``(features - mean) * scale``; ``features`` unchanged for ``None`` (the paper's protocol)."""
  if standardization is None:
    return features
  mean, scale = standardization
  return (features - mean) * scale


def make_linear_step(
  peak_lrs: np.ndarray,
  optimizer: optax.GradientTransformation,
  standardization: Standardization | None = None,
):
  """``step(clf, opt_state, features, labels) -> (clf, opt_state, losses)`` for L classifiers.

  ``clf = {"w": [L, D, C], "b": [L, C]}``; classifier l has peak lr ``peak_lrs[l]``; with
  ``standardization`` (:func:`feature_standardization`) the classifiers read standardised
  features. Runs under ``pmap`` over ``parallel.AXIS``: gradients are averaged over the global
  batch.
  """
  lrs = jnp.asarray(peak_lrs, jnp.float32)

  def loss_fn(clf, features, labels):
    features = standardize(features, standardization)
    logits = jnp.einsum("nd,ldc->lnc", features, clf["w"]) + clf["b"][:, None, :]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels[None, :])
    per_classifier = jnp.mean(ce, axis=1)
    return jnp.sum(per_classifier), per_classifier

  def step(clf, opt_state, features, labels):
    grads, losses = jax.grad(loss_fn, has_aux=True)(clf, features, labels)
    grads, losses = jax.lax.pmean((grads, losses), parallel.AXIS)
    updates, opt_state = optimizer.update(grads, opt_state, clf)
    # SGD with momentum is linear in the lr applied after it: one lr per classifier.
    updates = dict(w=updates["w"] * lrs[:, None, None], b=updates["b"] * lrs[:, None])
    return optax.apply_updates(clf, updates), opt_state, losses

  return step


def _feature_batches(
  features: np.ndarray,
  labels: np.ndarray,
  batch_size: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Endless shuffled batches of precomputed features (a new permutation per epoch).

  ``features`` are those of all processes; each yields its slots of every global batch of
  ``batch_size``, so the global batches do not depend on the number of processes.
  """
  local = pipeline.local_batch_size(batch_size, process_count)
  mine = slice(process_index * local, (process_index + 1) * local)
  rng = np.random.default_rng(seed)
  n = len(labels)
  order = np.zeros([0], np.int64)
  while True:
    while len(order) < batch_size:
      order = np.concatenate([order, rng.permutation(n)])
    idx, order = order[:batch_size][mine], order[batch_size:]
    yield features[idx], labels[idx]


def _checkpoint_and_sources(config: ml_collections.ConfigDict, task: str):
  """The common start of linear evaluation and fine-tuning: the checkpoint's encoder, and the
  labelled training and held-out sources with their number of classes."""
  config_base.validate_config(config)
  weights = encoder_lib.restore_encoder(config.checkpoint)
  encoder_lib.check_architecture(weights.spec, config.model, weights.source)
  parallel.check_devices(config.eval.batch_size)
  config = _with_checkpoint_view(config, weights)
  train_src = run_data.make_source(config, config.data.train_split)
  run_data.require_labels(train_src, task)
  test_src = run_data.heldout_source(config)
  run_data.require_labels(test_src, task)
  return config, weights, train_src, test_src, max(train_src.num_classes, test_src.num_classes)


def _with_checkpoint_view(config: ml_collections.ConfigDict, weights: encoder_lib.EncoderWeights):
  """``config``, or for ``data.image_size = 0`` a copy with the checkpoint run's evaluation view
  (``data.eval_image_size`` and ``data.eval_resize``, as ``load_encoder`` uses)."""
  if config.data.image_size:
    return config
  config = config.copy_and_resolve_references()
  size, resize = config_base.eval_view_sizes(weights.config.data)
  config.data.image_size, config.data.eval_resize = size, resize
  return config


def _validation_split(
  train_src: sources.DataSource, config: ml_collections.ConfigDict
) -> tuple[sources.DataSource, sources.DataSource | None]:
  """(training, validation) sources: ``eval.val_examples`` examples, at most a fifth of the
  training data, carved off to choose among several learning rates; no validation source for a
  single one."""
  if len(config.eval.base_lrs) == 1:
    return train_src, None
  count = min(config.eval.val_examples, train_src.num_examples // 5)
  return run_data.split_off(train_src, config, count, config.seed)


def _pmapped_encode(weights: encoder_lib.EncoderWeights, conv_impl: str):
  """``p_encode(params, state, images)``: the inference-mode encoder of ``weights``, ``pmap``-ed."""
  encode = encoder_lib.encode_fn(
    weights.spec, bn_decay=weights.bn_decay, bn_eps=weights.bn_eps, conv_impl=conv_impl
  )
  return jax.pmap(encode, axis_name=parallel.AXIS)


def _augmented_batches(
  source: sources.DataSource, config: ml_collections.ConfigDict, view: augment.AugmentParams
) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of endless augmented training batches of ``eval.batch_size``."""
  return pipeline.train_batches(
    source,
    global_batch_size=config.eval.batch_size,
    image_size=config.data.image_size,
    params=view,
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    shuffle_buffer=config.data.shuffle_buffer,
  )


def _train_loop(
  p_step, carry: tuple, batches: Iterator[tuple], total: int, what: str, log_every: int, *extra
):
  """Runs ``carry = p_step(*carry, *batch, *extra)[:-1]`` for ``total`` batches; the step's last
  output is its loss (one per classifier, or one), printed every ``log_every`` steps."""
  first = next(batches)
  parallel.compile_then_sync(p_step, (*carry, *first, *extra), f"{what.replace(' ', '_')}_step")
  is_main = jax.process_index() == 0
  for step, batch in zip(range(1, total + 1), itertools.chain([first], batches)):
    *carry, loss = p_step(*carry, *batch, *extra)
    if is_main and (step % max(1, log_every) == 0 or step == total):
      loss_text = ", ".join(f"{x:.4f}" for x in np.atleast_1d(np.asarray(loss[0])))
      print(f"{what} step {step}/{total} | loss {loss_text}", flush=True)
  return tuple(carry)


# --------------------------------------------------------------------------------------------
# Linear evaluation.


def _eval_features(config, p_encode, enc_params, enc_state, source, gather: bool = False):
  """Features and labels of ``source``'s evaluation views at the config's size: this process's
  shard, or with ``gather`` every process's, on every process (so that global batches are drawn
  from the whole training set and the standardisation is the same everywhere)."""
  image_size, resize = config.data.image_size, config.data.eval_resize
  eval_bs = features_lib.eval_batch_size(config.eval.batch_size)
  views = features_lib.eval_views(source, image_size, resize, eval_bs)
  return features_lib.extract_features(p_encode, enc_params, enc_state, views, gather=gather)


def _linear_training_stream(config, p_encode, enc_params, enc_state, train_src, features):
  """Endless (features, labels) device batches of the training set for the classifiers.

  With augmented views, each batch is encoded as it comes; without (``eval.train_augment =
  "none"``), from ``features``, the training set encoded once (:func:`_eval_features`).
  """
  view = _train_view(config)
  if view is not None:
    return (
      (p_encode(enc_params, enc_state, parallel.shard(b["image"])), parallel.shard(b["label"]))
      for b in _augmented_batches(train_src, config, view)
    )
  batches = _feature_batches(
    *features, config.eval.batch_size, config.seed, jax.process_index(), jax.process_count()
  )
  return ((parallel.shard(f), parallel.shard(y)) for f, y in batches)


def _linear_scores(config, p_encode, enc_params, enc_state, clf, standardization, source):
  """Every classifier's scores [L, N, C] of this process's examples of ``source``, and labels."""
  feats, labels = _eval_features(config, p_encode, enc_params, enc_state, source)
  feats = standardize(feats, standardization)
  return np.einsum("nd,ldc->lnc", feats, clf["w"]) + clf["b"][:, None, :], labels


def lr_grid_warning(base_lrs: list[float], best: int) -> str | None:
  """A warning when ``base_lrs[best]`` (chosen on validation) is the smallest or the largest of
  a grid of several: the optimum may lie beyond it. None otherwise."""
  if len(set(base_lrs)) < 2:
    return None
  chosen, low, high = base_lrs[best], min(base_lrs), max(base_lrs)
  if chosen not in (low, high):
    return None
  ordered = sorted(set(base_lrs))
  if chosen == low:
    end, extended = "smallest", [low * low / ordered[1], *ordered]
  else:
    end, extended = "largest", [*ordered, high * high / ordered[-2]]
  grid = ",".join(f"{lr:.3g}" for lr in extended)
  return (
    f"the chosen base lr {chosen:g} is the {end} of eval.base_lrs: the best lr may lie beyond "
    f"the grid; extend it, e.g. --config.eval.base_lrs='({grid})'."
  )


def _choose_and_test(score_fn, val_src, test_src, base_lrs: list[float]) -> dict:
  """The lr with the best validation top-1 (the only one without validation) and its test
  accuracies, over all processes' examples: every process picks the same lr and reports the
  same."""
  results: dict = {}
  best = 0
  if val_src is not None:
    val_accuracy, _ = global_accuracy(*score_fn(val_src), ks=(1,))
    val_top1 = val_accuracy[:, 0].tolist()
    best = int(np.argmax(val_top1))
    results["val_top1_per_lr"] = dict(zip(map(str, base_lrs), val_top1))
    results["val_top1"] = val_top1[best]
  test_scores, test_labels = score_fn(test_src)
  accuracy, count = global_accuracy(test_scores[best : best + 1], test_labels)
  results["base_lr"] = base_lrs[best]
  results["top1"], results["top5"] = accuracy[0].tolist()
  results["test_examples"] = count
  return _note_grid_edge(results, base_lrs, best)


def _note_grid_edge(results: dict, base_lrs: list[float], best: int) -> dict:
  """``results`` with ``lr_warning`` (:func:`lr_grid_warning`) where the best lr is at an end."""
  warning = lr_grid_warning(base_lrs, best)
  if warning:
    results["lr_warning"] = warning
  return results


def _print_result(what: str, results: dict) -> None:
  """The result line (process 0), and the lr grid's warning line if any."""
  if jax.process_index() != 0:
    return
  print(
    f"{what}: top-1 {100 * results['top1']:.2f}%, top-5 {100 * results['top5']:.2f}% on "
    f"{results['test_examples']} test images (base lr {results['base_lr']}).",
    flush=True,
  )
  if "lr_warning" in results:
    print(f"warning: {results['lr_warning']}", flush=True)


def linear_eval(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The paper's linear evaluation of ``config.checkpoint`` (on standardised features with
  ``eval.standardize_features``); returns (and writes) the results."""
  config, weights, train_src, test_src, num_classes = _checkpoint_and_sources(
    config, "Linear evaluation"
  )
  train_src, val_src = _validation_split(train_src, config)
  batch_size = config.eval.batch_size
  base_lrs = [float(lr) for lr in config.eval.base_lrs]
  p_encode = _pmapped_encode(weights, config.model.conv_impl)
  enc_params, enc_state = parallel.replicate((weights.params, weights.state))
  dim = encoder_lib.feature_dim(weights.spec)
  standardized = bool(config.eval.standardize_features)
  total = _num_steps(config, train_src.num_examples)
  if jax.process_index() == 0:
    print(
      f"Linear evaluation of {weights.source} ({weights.spec.name}, {dim}-d "
      f"{'standardised ' if standardized else ''}features of {config.data.image_size}x"
      f"{config.data.image_size} views): {train_src.num_examples} training images, {total} "
      f"steps of batch {batch_size}, base lrs {base_lrs}.",
      flush=True,
    )
  features = None
  if standardized or _train_view(config) is None:
    features = _eval_features(config, p_encode, enc_params, enc_state, train_src, gather=True)
  standardization = feature_standardization(features[0]) if standardized else None

  peak_lrs = np.array([schedules.scaled_learning_rate(lr, batch_size) for lr in base_lrs])
  optimizer = _sgd(total, config.eval.weight_decay)
  clf = dict(
    w=np.zeros((len(base_lrs), dim, num_classes), np.float32),
    b=np.zeros((len(base_lrs), num_classes), np.float32),
  )
  carry = parallel.replicate((clf, optimizer.init(clf)))
  p_step = jax.pmap(
    make_linear_step(peak_lrs, optimizer, standardization),
    axis_name=parallel.AXIS,
    donate_argnums=(0, 1),
  )
  stream = _linear_training_stream(config, p_encode, enc_params, enc_state, train_src, features)
  clf, _ = _train_loop(p_step, carry, stream, total, "linear eval", config.eval.log_every_steps)
  clf = parallel.unreplicate(clf)

  def scores(source):
    return _linear_scores(config, p_encode, enc_params, enc_state, clf, standardization, source)

  results = dict(
    checkpoint=weights.source,
    checkpoint_step=weights.step,
    steps=total,
    image_size=config.data.image_size,
    standardize_features=standardized,
  )
  results.update(_choose_and_test(scores, val_src, test_src, base_lrs))
  _print_result("Linear evaluation", results)
  _write_results(workdir, "linear_eval", results, total)
  return results


# --------------------------------------------------------------------------------------------
# Fine-tuning on a label subset.


def make_finetune_step(network: hk.TransformedWithState, optimizer):
  """``step(params, state, opt_state, images, labels, peak_lr)`` training encoder and linear head.

  The lr is an argument, so one compiled step serves every learning rate of a sweep.
  """

  def loss_fn(params, state, images, labels):
    images = device_augment.normalize(device_augment.to_float(images))
    features, state = network.apply(params["encoder"], state, images, is_training=True)
    logits = features @ params["head"]["w"] + params["head"]["b"]
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    return loss, state

  def step(params, state, opt_state, images, labels, peak_lr):
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, images, labels)
    loss, grads = jax.lax.pmean((loss, grads), parallel.AXIS)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: u * peak_lr, updates)
    return optax.apply_updates(params, updates), state, opt_state, loss

  return step


def _label_subset(config: ml_collections.ConfigDict, full: sources.DataSource, workdir: str):
  """``(source, indices)``: the stratified ``eval.label_fraction`` of the training labels,
  recorded in ``<workdir>/label_subset.json`` (with the file names of an image folder)."""
  labels = subsets.source_labels(full)
  chosen = subsets.choose_label_subset(labels, config.eval.label_fraction, config.eval.label_seed)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    record = dict(
      fraction=config.eval.label_fraction,
      seed=config.eval.label_seed,
      source=full.name,
      indices=chosen.tolist(),
    )
    if isinstance(full, sources.FileSource):
      record["files"] = [full.paths[i] for i in chosen]
    with open(os.path.join(workdir, "label_subset.json"), "w") as f:
      json.dump(record, f)
  if full.random_access:
    return sources.subset_source(full, chosen), chosen
  return subsets.materialize_tfds_subset(full, chosen), chosen


def _finetune_at(config, weights, p_step, optimizer, batches, total, base_lr, num_classes):
  """Encoder and a zero-initialised linear head trained at one base lr; (params, state)."""
  dim = encoder_lib.feature_dim(weights.spec)
  params = dict(
    encoder=weights.params,
    head=dict(w=np.zeros((dim, num_classes), np.float32), b=np.zeros((num_classes,), np.float32)),
  )
  carry = parallel.replicate((params, weights.state, optimizer.init(params)))
  peak_lr = np.float32(schedules.scaled_learning_rate(base_lr, config.eval.batch_size))
  device_batches = (parallel.shard((b["image"], b["label"])) for b in batches)
  params, state, _ = _train_loop(
    p_step, carry, device_batches, total, "finetune", config.eval.log_every_steps, peak_lr
  )
  return params, state


def _finetuned_accuracy(config, p_encode, params, state, val_src, test_src):
  """(validation top-1 or None, [test top-1, top-5], test examples) over all processes."""
  image_size, resize = config.data.image_size, config.data.eval_resize
  eval_bs = features_lib.eval_batch_size(config.eval.batch_size)
  head = parallel.unreplicate(params["head"])

  def scores(source):
    feats, labels = features_lib.extract_features(
      p_encode,
      params["encoder"],
      state,
      features_lib.eval_views(source, image_size, resize, eval_bs),
    )
    return (feats @ head["w"] + head["b"])[None], labels

  val_top1 = None
  if val_src is not None:
    val_top1 = float(global_accuracy(*scores(val_src), ks=(1,))[0][0, 0])
  test_accuracy, count = global_accuracy(*scores(test_src))
  return val_top1, test_accuracy[0].tolist(), count


def finetune(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Fine-tunes ``config.checkpoint`` on ``eval.label_fraction`` of the labels; returns results."""
  config, weights, full, test_src, num_classes = _checkpoint_and_sources(config, "Fine-tuning")
  train_src, chosen = _label_subset(config, full, workdir)
  train_src, val_src = _validation_split(train_src, config)
  network = encoder_lib.encoder_network(
    weights.spec,
    bn_decay=weights.bn_decay,
    bn_eps=weights.bn_eps,
    axis_name=parallel.AXIS,
    conv_impl=config.model.conv_impl,
    remat=config.model.remat,
  )
  p_encode = _pmapped_encode(weights, config.model.conv_impl)
  total = _num_steps(config, train_src.num_examples)
  view = _train_view(config) or augment.get_preset("crop_only")[0].replace(crop_area_min=1.0)
  optimizer = _sgd(total, config.eval.weight_decay)
  p_step = jax.pmap(
    make_finetune_step(network, optimizer),
    axis_name=parallel.AXIS,
    in_axes=(0, 0, 0, 0, 0, None),
    donate_argnums=(0, 1, 2),
  )
  is_main = jax.process_index() == 0
  runs = []
  for base_lr in [float(lr) for lr in config.eval.base_lrs]:
    if is_main:
      print(
        f"Fine-tuning {weights.source} on {train_src.num_examples} labelled images "
        f"({100 * config.eval.label_fraction:g}%): {total} steps, base lr {base_lr}.",
        flush=True,
      )
    batches = _augmented_batches(train_src, config, view)
    params, state = _finetune_at(
      config, weights, p_step, optimizer, batches, total, base_lr, num_classes
    )
    runs.append((base_lr, *_finetuned_accuracy(config, p_encode, params, state, val_src, test_src)))
  # Every process picks the same lr: the accuracies are over all processes' examples.
  best = max(range(len(runs)), key=lambda i: runs[i][1] or 0.0)
  base_lr, val_top1, (top1, top5), count = runs[best]
  results: dict = dict(
    checkpoint=weights.source,
    checkpoint_step=weights.step,
    label_fraction=config.eval.label_fraction,
    labelled_examples=len(chosen),
    steps=total,
    base_lr=base_lr,
    top1=top1,
    top5=top5,
    test_examples=count,
  )
  if val_top1 is not None:
    results["val_top1"] = val_top1
  _note_grid_edge(results, [run[0] for run in runs], best)
  _print_result(f"Fine-tuning on {100 * config.eval.label_fraction:g}% of the labels", results)
  _write_results(workdir, "finetune", results, total)
  return results


# --------------------------------------------------------------------------------------------
# Embeddings.


def embed(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes features, labels and file names of ``config.data`` to ``.npz``; returns its path.

  The images get the checkpoint's evaluation preprocessing. For image folders the whole folder
  is embedded (no hold-out). Files that cannot be read or decoded are left out (one warning
  line); every row keeps its own file name.
  """
  config_base.validate_config(config)
  encoder = encoder_lib.load_encoder(config.checkpoint)
  encoder_lib.check_architecture(encoder.spec, config.model, encoder.weights.source)
  config = _with_checkpoint_view(config, encoder.weights)
  if config.data.source == "folder":
    source = sources.folder_source(config.data.path)
  else:
    source = run_data.make_source(config, config.data.train_split)
  feats, labels, indices = [], [], []
  for batch in pipeline.eval_batches(
    source, batch_size=256, image_size=encoder.image_size, resize_size=encoder.resize_size
  ):
    keep = batch["mask"]
    feats.append(encoder.embed_views(batch["image"])[keep])
    labels.append(batch["label"][keep])
    indices.append(batch["index"][keep])
  # Each row's own file, by the source index its batch carries (failed files leave gaps).
  paths = getattr(source, "paths", None)
  names = [paths[i] if paths else "" for i in np.concatenate(indices).tolist()]
  output = config.eval.output or os.path.join(workdir, "embeddings.npz")
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  features = np.concatenate(feats)
  np.savez(
    output,
    features=features,
    labels=np.concatenate(labels),
    filenames=np.asarray(names, dtype=str),
  )
  print(f"Wrote {len(features)} {features.shape[1]}-d features to {output}.", flush=True)
  return output
