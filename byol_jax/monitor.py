"""Representation quality during pretraining: a weighted kNN monitor on held-out data.

Every ``config.eval.knn_every_steps`` steps, :class:`KnnMonitor` embeds a labelled training subset
and a labelled held-out set with the frozen online encoder (BatchNorm in inference mode), and
classifies the held-out images by the weighted vote of their k nearest training features
(k = 200, cosine similarity, weights exp(sim / 0.1)). With the online linear probe on, it also
reports the probe's accuracy on the held-out features. The evaluation views (resize + centre crop)
are prepared once and kept in memory when they fit.

Held-out data: the synthetic "test" split, the image-folder hold-out (``config.data.holdout``), or
``config.data.eval_split`` for TFDS. Single-process runs only (multi-host runs skip the monitor).
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from absl import logging

from byol_jax import config_base, models, parallel, probes, run_data
from byol_jax import encoder as encoder_lib
from byol_jax import features as features_lib
from byol_jax.data import sources
from byol_jax.errors import UserError

# Evaluation views are cached in memory as float32 up to this size, else as uint8.
_FLOAT_CACHE_BYTES = 1 << 30


class KnnMonitor:
  """Weighted kNN (and online-probe) accuracy of the online encoder on held-out data."""

  def __init__(
    self,
    spec: models.EncoderSpec,
    *,
    train_source: sources.DataSource,
    eval_source: sources.DataSource,
    image_size: int,
    resize_size: int,
    every_steps: int,
    k: int = 200,
    temperature: float = 0.1,
    bn_decay: float = 0.9,
    bn_eps: float = 1e-5,
    batch_size: int = 256,
  ):
    for src in (train_source, eval_source):
      if not src.has_labels:
        raise UserError(
          f"The kNN monitor needs labels but {src.name} is unlabelled: arrange the images as "
          "<path>/<class>/*.jpg, or turn it off with --config.eval.knn_every_steps=0."
        )
    self.spec = spec
    self.image_size = image_size
    self.every_steps = every_steps
    self.k = k
    self.temperature = temperature
    self.num_classes = max(train_source.num_classes, eval_source.num_classes)
    self._batch = features_lib.eval_batch_size(batch_size)
    self._train = self._prepare(train_source, image_size, resize_size)
    self._eval = self._prepare(eval_source, image_size, resize_size)
    self._p_encode = jax.pmap(
      encoder_lib.encode_fn(spec, bn_decay=bn_decay, bn_eps=bn_eps), axis_name=parallel.AXIS
    )

  def _prepare(self, source: sources.DataSource, image_size: int, resize_size: int):
    nbytes = source.num_examples * image_size * image_size * 3 * 4
    batches = []
    # Single-process (see from_config): every example is this process's.
    for batch in features_lib.eval_views(source, image_size, resize_size, self._batch):
      if nbytes > _FLOAT_CACHE_BYTES:  # the encoder maps uint8 back to [0, 1]
        batch = dict(batch, image=np.round(batch["image"] * 255).astype(np.uint8))
      batches.append(batch)
    return batches

  def due(self, step: int, total_steps: int) -> bool:
    """Whether ``step`` is a monitoring step (every ``every_steps`` steps, and the last one)."""
    return self.every_steps > 0 and (step % self.every_steps == 0 or step == total_steps)

  def views(self, which: str = "eval") -> list[dict[str, np.ndarray]]:
    """The prepared batches (image, label, mask) of the "train" or "eval" set."""
    return self._train if which == "train" else self._eval

  def features(
    self, params, state, which: str = "eval", replicated: bool = True
  ) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of the "train" or "eval" set under (replicated) ``params``/``state``."""
    params = encoder_lib.encoder_part(params, self.spec)
    state = encoder_lib.encoder_part(state, self.spec)
    if not replicated:
      params, state = parallel.replicate((params, state))
    return features_lib.extract_features(self._p_encode, params, state, self.views(which))

  def __call__(self, online_params, online_state, replicated: bool = True) -> dict[str, float]:
    """{"knn_top1", "knn_top5"[, "probe_top1"]} of the online network's parameters and state.

    ``replicated``: whether the arguments carry the leading device axis of the ``pmap``-ed
    training state (as inside the training loop) or are plain host trees.
    """
    train_f, train_y = self.features(online_params, online_state, "train", replicated)
    eval_f, eval_y = self.features(online_params, online_state, "eval", replicated)
    acc = probes.knn_accuracy(
      train_f, train_y, eval_f, eval_y, self.num_classes, k=self.k, temperature=self.temperature
    )
    metrics = dict(knn_top1=acc["top1"], knn_top5=acc["top5"])
    if "linear_probe" in online_params:
      probe = online_params["linear_probe"]
      if replicated:
        probe = parallel.unreplicate(probe)
      scores = eval_f @ np.asarray(probe["w"]) + np.asarray(probe["b"])
      metrics["probe_top1"] = probes.top_k_accuracy(scores, eval_y)
    return metrics


def from_config(
  config: ml_collections.ConfigDict, train_source: sources.DataSource
) -> KnnMonitor | None:
  """The monitor of a pretraining config (None when off); checks the online probe's classes.

  Driver code, like ``train.pretrain``: it reads the config.
  """
  probe_classes = config.eval.online_probe_classes
  if probe_classes and probe_classes != train_source.num_classes:
    raise UserError(
      f"config.eval.online_probe_classes={probe_classes} but {train_source.name} has "
      f"{train_source.num_classes} classes: set it to {train_source.num_classes} (0 turns the "
      "probe off)."
    )
  if config.eval.knn_every_steps <= 0:
    return None
  if jax.process_count() > 1:
    logging.warning("The kNN monitor runs in single-process runs only; it is off.")
    return None
  seed = config.data.holdout_seed + 1
  knn_train = run_data.at_most(
    train_source, config.eval.knn_train_examples, seed, config, config.data.train_split
  )
  held = run_data.heldout_source(config)
  knn_eval = run_data.at_most(
    held, config.eval.knn_eval_examples, seed, config, config.data.eval_split
  )
  image_size, resize_size = config_base.eval_view_sizes(config.data, config.eval.knn_image_size)
  return KnnMonitor(
    encoder_lib.spec_from_config(config.model),
    train_source=knn_train,
    eval_source=knn_eval,
    image_size=image_size,
    resize_size=resize_size,
    every_steps=config.eval.knn_every_steps,
    k=config.eval.knn_k,
    temperature=config.eval.knn_temperature,
    bn_decay=config.model.bn_decay,
    bn_eps=config.model.bn_eps,
  )
