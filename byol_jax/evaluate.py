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

from byol_jax import config_base, models, parallel, schedules, train, writers
from byol_jax import encoder as encoder_lib
from byol_jax.data import augment, device_augment, pipeline, sources
from byol_jax.errors import UserError

AXIS = parallel.AXIS


# --------------------------------------------------------------------------------------------
# Data of the evaluations.


def heldout_source(config: ml_collections.ConfigDict) -> sources.DataSource:
  """The labelled evaluation data: the folder hold-out, or ``data.eval_split`` otherwise."""
  if config.data.source == "folder":
    if config.data.holdout <= 0:
      raise UserError(
        "An image folder has no test split: hold out images with --config.data.holdout=N "
        "(e.g. 5000), or evaluate on another source."
      )
    return train.make_source(config, config.data.train_split, subset="holdout")
  return train.make_source(config, config.data.eval_split)


def require_labels(source: sources.DataSource, what: str) -> None:
  """UserError unless ``source`` is labelled."""
  if not source.has_labels:
    raise UserError(
      f"{what} needs labels but {source.name} is unlabelled (a flat folder): arrange the images "
      "as <path>/<class>/*.jpg."
    )


def split_off(
  source: sources.DataSource,
  config: ml_collections.ConfigDict,
  count: int,
  seed: int,
) -> tuple[sources.DataSource, sources.DataSource]:
  """(rest, part): ``count`` examples carved out of a training source, stratified if labelled.

  TFDS splits are cut with split slicing (the last ``count`` records).
  """
  if not 0 < count < source.num_examples:
    raise UserError(
      f"Cannot hold out {count} of the {source.num_examples} training examples for validation: "
      "choose --config.eval.val_examples between 1 and the training examples (or use more labels"
      " with --config.eval.label_fraction, or a single --config.eval.base_lrs)."
    )
  if not source.random_access:
    split = config.data.train_split
    rest = train.make_source(config, f"{split}[:-{count}]")
    part = train.make_source(config, f"{split}[-{count}:]")
    return rest, part
  labels = getattr(source, "labels", None)
  if labels is None:
    labels = np.zeros([source.num_examples], np.int32)
  rest_idx, part_idx = sources.stratified_holdout(labels, count, seed)
  return sources.subset_source(source, rest_idx), sources.subset_source(source, part_idx)


def eval_views(
  source: sources.DataSource, image_size: int, resize_size: int, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
  """Centre-crop evaluation batches of one process's shard (the last one padded, see mask)."""
  return pipeline.eval_batches(
    source,
    batch_size=batch_size,
    image_size=image_size,
    resize_size=resize_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )


def extract_features(
  p_encode,
  params: hk.Params,
  state: hk.State,
  batches: Iterator[dict[str, np.ndarray]],
  gather: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
  """Features and labels of every real example of ``batches`` with a ``pmap``-ed encoder.

  ``params`` and ``state`` are replicated over the local devices; padding examples are dropped.
  ``batches`` are this process's (:func:`eval_views`); with ``gather`` every process gets those
  of all processes, in the source's order (the shards are contiguous blocks in process order).
  """
  parts = []
  for batch in batches:
    out = p_encode(params, state, parallel.shard(batch["image"]))
    parts.append((np.asarray(out).reshape(len(batch["image"]), -1), batch["label"], batch["mask"]))
  if not parts:
    raise UserError("The evaluation data is empty: check the dataset and its split.")
  if gather:
    # Batch by batch: every process has the same number of (padded) batches, and one gathered
    # batch fits in any device's memory, unlike a whole gathered training set.
    parallel.sync_processes("features")
    parts = [multihost_utils.process_allgather(part) for part in parts]
  else:
    parts = [[x[None] for x in part] for part in parts]
  # [processes, examples of all batches, ...], flattened in process order.
  feats, labels, mask = (np.concatenate(xs, axis=1) for xs in zip(*parts))
  mask = mask.reshape(-1)
  return feats.reshape(mask.size, -1)[mask], labels.reshape(-1)[mask]


def _eval_batch_size(batch_size: int) -> int:
  # Global, like batch_size: each process's share must split over its devices.
  n = jax.device_count()
  return max(n, batch_size // n * n)


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


def make_linear_step(peak_lrs: np.ndarray, optimizer: optax.GradientTransformation):
  """``step(clf, opt_state, features, labels) -> (clf, opt_state, losses)`` for L classifiers.

  ``clf = {"w": [L, D, C], "b": [L, C]}``; classifier l has peak lr ``peak_lrs[l]``. Runs under
  ``pmap`` over ``AXIS``: gradients are averaged over the global batch.
  """
  lrs = jnp.asarray(peak_lrs, jnp.float32)

  def loss_fn(clf, features, labels):
    logits = jnp.einsum("nd,ldc->lnc", features, clf["w"]) + clf["b"][:, None, :]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels[None, :])
    per_classifier = jnp.mean(ce, axis=1)
    return jnp.sum(per_classifier), per_classifier

  def step(clf, opt_state, features, labels):
    grads, losses = jax.grad(loss_fn, has_aux=True)(clf, features, labels)
    grads, losses = jax.lax.pmean((grads, losses), AXIS)
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
  train.check_devices(config.eval.batch_size)
  train_src = train.make_source(config, config.data.train_split)
  require_labels(train_src, task)
  test_src = heldout_source(config)
  require_labels(test_src, task)
  return weights, train_src, test_src, max(train_src.num_classes, test_src.num_classes)


def linear_eval(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The paper's linear evaluation of ``config.checkpoint``; returns (and writes) the results."""
  weights, train_src, test_src, num_classes = _checkpoint_and_sources(config, "Linear evaluation")
  batch_size = config.eval.batch_size
  image_size, resize = config.data.image_size, config.data.eval_resize
  base_lrs = [float(lr) for lr in config.eval.base_lrs]
  val_src = None
  if len(base_lrs) > 1:
    train_src, val_src = split_off(train_src, config, config.eval.val_examples, config.seed)

  encode = encoder_lib.encode_fn(
    weights.spec,
    bn_decay=weights.bn_decay,
    bn_eps=weights.bn_eps,
    conv_impl=config.model.conv_impl,
  )
  p_encode = jax.pmap(encode, axis_name=AXIS)
  enc_params = parallel.replicate(weights.params)
  enc_state = parallel.replicate(weights.state)
  eval_bs = _eval_batch_size(batch_size)
  dim = encoder_lib.Encoder(weights, image_size, resize).dim

  total = _num_steps(config, train_src.num_examples)
  peak_lrs = np.array([schedules.scaled_learning_rate(lr, batch_size) for lr in base_lrs])
  optimizer = _sgd(total, config.eval.weight_decay)
  clf = dict(
    w=np.zeros((len(base_lrs), dim, num_classes), np.float32),
    b=np.zeros((len(base_lrs), num_classes), np.float32),
  )
  opt_state = optimizer.init(clf)
  clf, opt_state = parallel.replicate((clf, opt_state))
  p_step = jax.pmap(make_linear_step(peak_lrs, optimizer), axis_name=AXIS, donate_argnums=(0, 1))

  is_main = jax.process_index() == 0
  if is_main:
    print(
      f"Linear evaluation of {weights.source} ({weights.spec.name}, {dim}-d features): "
      f"{train_src.num_examples} training images, {total} steps of batch {batch_size}, "
      f"base lrs {base_lrs}.",
      flush=True,
    )
  view = _train_view(config)
  if view is None:  # frozen encoder and fixed views: encode the training set once
    # Every process keeps the features of all processes' shards (as one process would), so the
    # global batches are drawn from the whole training set.
    feats, labels = extract_features(
      p_encode,
      enc_params,
      enc_state,
      eval_views(train_src, image_size, resize, eval_bs),
      gather=True,
    )
    batches = _feature_batches(
      feats, labels, batch_size, config.seed, jax.process_index(), jax.process_count()
    )
    feature_stream = ((parallel.shard(f), parallel.shard(y)) for f, y in batches)
  else:
    batches = pipeline.train_batches(
      train_src,
      global_batch_size=batch_size,
      image_size=image_size,
      params=view,
      seed=config.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      shuffle_buffer=config.data.shuffle_buffer,
    )
    feature_stream = (
      (p_encode(enc_params, enc_state, parallel.shard(b["image"])), parallel.shard(b["label"]))
      for b in batches
    )
  first = next(feature_stream)
  parallel.compile_then_sync(p_step, (clf, opt_state, *first), "linear_step")
  feature_stream = itertools.chain([first], feature_stream)
  log_every = max(1, config.eval.log_every_steps)
  for step, (features, labels) in zip(range(1, total + 1), feature_stream):
    clf, opt_state, losses = p_step(clf, opt_state, features, labels)
    if is_main and (step % log_every == 0 or step == total):
      loss_text = ", ".join(f"{x:.4f}" for x in np.asarray(losses[0]))
      print(f"linear eval step {step}/{total} | loss {loss_text}", flush=True)
  clf = parallel.unreplicate(clf)

  def scores(src):
    feats, labels = extract_features(
      p_encode, enc_params, enc_state, eval_views(src, image_size, resize, eval_bs)
    )
    return np.einsum("nd,ldc->lnc", feats, clf["w"]) + clf["b"][:, None, :], labels

  # Accuracies over all processes' examples: every process picks the same lr and reports the same.
  results: dict = dict(checkpoint=weights.source, checkpoint_step=weights.step, steps=total)
  best = 0
  if val_src is not None:
    val_accuracy, _ = global_accuracy(*scores(val_src), ks=(1,))
    val_top1 = val_accuracy[:, 0].tolist()
    best = int(np.argmax(val_top1))
    results["val_top1_per_lr"] = dict(zip(map(str, base_lrs), val_top1))
    results["val_top1"] = val_top1[best]
  test_scores, test_labels = scores(test_src)
  accuracy, count = global_accuracy(test_scores[best : best + 1], test_labels)
  results["base_lr"] = base_lrs[best]
  results["top1"], results["top5"] = accuracy[0].tolist()
  results["test_examples"] = count
  if is_main:
    print(
      f"Linear evaluation: top-1 {100 * results['top1']:.2f}%, top-5 "
      f"{100 * results['top5']:.2f}% on {count} test images (base lr {base_lrs[best]}).",
      flush=True,
    )
  _write_results(workdir, "linear_eval", results, total)
  return results


# --------------------------------------------------------------------------------------------
# Fine-tuning on a label subset.


def choose_label_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of a stratified ``fraction`` of the examples, deterministic in ``seed``."""
  n = len(labels)
  count = max(1, round(fraction * n))
  if count >= n:
    return np.arange(n, dtype=np.int64)
  return sources.stratified_holdout(labels, count, seed)[1]


def source_labels(source: sources.DataSource) -> np.ndarray:
  """Every label of a source, in storage order (TFDS: one pass over the records, undecoded)."""
  labels = getattr(source, "labels", None)
  if labels is not None:
    return np.asarray(labels)
  if not isinstance(source, sources.TfdsSource):
    raise TypeError(f"Cannot list the labels of {source.name}.")
  ds = source.records().map(lambda r: r["label"]).batch(65536)
  return np.concatenate(list(ds.as_numpy_iterator()))


class EncodedSource(sources.DataSource):
  """In-memory encoded images (e.g. a label subset of a TFDS split), decoded on read."""

  def __init__(self, encoded: list[bytes], labels: np.ndarray, num_classes: int, name: str):
    self.name = name
    self.encoded = encoded
    self.labels = np.asarray(labels, np.int32)
    self.num_examples = len(encoded)
    self.num_classes = num_classes
    self._encoded_t = None
    self._labels_t = None

  def read(self, index):
    import tensorflow as tf

    if self._encoded_t is None:
      with tf.init_scope():
        self._encoded_t = tf.constant(self.encoded)
        self._labels_t = tf.constant(self.labels)
    record = {"image": tf.gather(self._encoded_t, index), "label": tf.gather(self._labels_t, index)}
    return sources.TfdsSource.decode(record)


def materialize_tfds_subset(source: sources.TfdsSource, indices: np.ndarray) -> EncodedSource:
  """The records ``indices`` (storage order) of a TFDS split, kept encoded in memory.

  One pass over the split; 1% of ImageNet is about 1.4 GB, 10% about 14 GB of host memory.
  """
  import tensorflow as tf

  wanted = np.zeros([source.num_examples], bool)
  wanted[indices] = True
  mask = tf.constant(wanted)
  ds = source.records().enumerate().filter(lambda i, r: tf.gather(mask, i))
  encoded, labels = [], []
  for _, record in ds.as_numpy_iterator():
    encoded.append(record["image"])
    labels.append(record["label"])
  return EncodedSource(encoded, np.asarray(labels), source.num_classes, f"{source.name}[subset]")


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
    loss, grads = jax.lax.pmean((loss, grads), AXIS)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: u * peak_lr, updates)
    return optax.apply_updates(params, updates), state, opt_state, loss

  return step


def finetune(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Fine-tunes ``config.checkpoint`` on ``eval.label_fraction`` of the labels; returns results."""
  weights, full, test_src, num_classes = _checkpoint_and_sources(config, "Fine-tuning")
  batch_size = config.eval.batch_size
  image_size, resize = config.data.image_size, config.data.eval_resize
  labels = source_labels(full)
  chosen = choose_label_subset(labels, config.eval.label_fraction, config.eval.label_seed)
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
    train_src = sources.subset_source(full, chosen)
  else:
    train_src = materialize_tfds_subset(full, chosen)
  base_lrs = [float(lr) for lr in config.eval.base_lrs]
  val_src = None
  if len(base_lrs) > 1:
    train_src, val_src = split_off(
      train_src, config, min(config.eval.val_examples, train_src.num_examples // 5), config.seed
    )

  conv_impl = models.resolve_conv_impl(config.model.conv_impl, jax.default_backend())
  network = models.make_encoder_network(
    weights.spec,
    bn_decay=weights.bn_decay,
    bn_eps=weights.bn_eps,
    axis_name=AXIS,
    conv_impl=conv_impl,
  )
  encode = encoder_lib.encode_fn(
    weights.spec, bn_decay=weights.bn_decay, bn_eps=weights.bn_eps, conv_impl=conv_impl
  )
  p_encode = jax.pmap(encode, axis_name=AXIS)
  dim = encoder_lib.Encoder(weights, image_size, resize).dim
  total = _num_steps(config, train_src.num_examples)
  view = _train_view(config) or augment.get_preset("crop_only")[0].replace(crop_area_min=1.0)
  eval_bs = _eval_batch_size(batch_size)
  is_main = jax.process_index() == 0

  optimizer = _sgd(total, config.eval.weight_decay)
  p_step = jax.pmap(
    make_finetune_step(network, optimizer),
    axis_name=AXIS,
    in_axes=(0, 0, 0, 0, 0, None),
    donate_argnums=(0, 1, 2),
  )
  runs = []
  for base_lr in base_lrs:
    peak_lr = np.float32(schedules.scaled_learning_rate(base_lr, batch_size))
    params = dict(
      encoder=weights.params,
      head=dict(w=np.zeros((dim, num_classes), np.float32), b=np.zeros((num_classes,), np.float32)),
    )
    opt_state = optimizer.init(params)
    params, state, opt_state = parallel.replicate((params, weights.state, opt_state))
    if is_main:
      print(
        f"Fine-tuning {weights.source} on {train_src.num_examples} labelled images "
        f"({100 * config.eval.label_fraction:g}%): {total} steps, base lr {base_lr}.",
        flush=True,
      )
    batches = pipeline.train_batches(
      train_src,
      global_batch_size=batch_size,
      image_size=image_size,
      params=view,
      seed=config.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      shuffle_buffer=config.data.shuffle_buffer,
    )
    device_batches = (parallel.shard((b["image"], b["label"])) for b in batches)
    first = next(device_batches)
    parallel.compile_then_sync(p_step, (params, state, opt_state, *first, peak_lr), "finetune_step")
    device_batches = itertools.chain([first], device_batches)
    for step, (images, targets) in zip(range(1, total + 1), device_batches):
      params, state, opt_state, loss = p_step(params, state, opt_state, images, targets, peak_lr)
      if is_main and (step % max(1, config.eval.log_every_steps) == 0 or step == total):
        print(f"finetune step {step}/{total} | loss {float(loss[0]):.4f}", flush=True)

    def scores(src, params=params, state=state):
      feats, labels = extract_features(
        p_encode, params["encoder"], state, eval_views(src, image_size, resize, eval_bs)
      )
      head = parallel.unreplicate(params["head"])
      return feats @ head["w"] + head["b"], labels

    # Accuracies over all processes' examples: every process picks the same lr.
    val_top1 = None
    if val_src is not None:
      val_scores, val_labels = scores(val_src)
      val_accuracy, _ = global_accuracy(val_scores[None], val_labels, ks=(1,))
      val_top1 = float(val_accuracy[0, 0])
    test_scores, test_labels = scores(test_src)
    test_accuracy, count = global_accuracy(test_scores[None], test_labels)
    runs.append((val_top1, base_lr, test_accuracy[0].tolist(), count))
  best = max(range(len(runs)), key=lambda i: runs[i][0] if runs[i][0] is not None else 0.0)
  val_top1, base_lr, (top1, top5), count = runs[best]
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
  if is_main:
    print(
      f"Fine-tuning on {100 * config.eval.label_fraction:g}% of the labels: top-1 "
      f"{100 * top1:.2f}%, top-5 {100 * top5:.2f}% on {count} test images (base lr {base_lr}).",
      flush=True,
    )
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
  if config.data.source == "folder":
    source = sources.folder_source(config.data.path)
  else:
    source = train.make_source(config, config.data.train_split)
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
