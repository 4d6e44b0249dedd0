"""Evaluates a CIFAR-10 folder pretraining (``configs/byol_cifar10_cpu.py``) on a CPU, in minutes.

  python experiments/eval_cifar_cpu.py --workdir=runs/byol_cifar10_cpu

Reads the run's checkpoint and saved config (image folder, hold-out), then extracts frozen
features (evaluation view: centre crop, inference-mode BatchNorm) of the 5,000 held-out images and
of a stratified 10,000-image subset of the training images, and reports for three representations
-- the BYOL encoder, the same encoder at random initialisation, and raw pixels -- the top-1 of

* a linear probe: multinomial logistic regression on standardised features, L-BFGS to
  convergence, its L2 penalty chosen on a fifth of the training subset;
* weighted kNN: k = 200, cosine similarity, weights exp(sim / 0.1).

Evaluation views are the run's (``data.eval_image_size``, which may upsample the 32x32 images;
``--image_size=32`` evaluates at the images' own size); raw pixels are always 32x32x3.
``--nobaselines`` evaluates the BYOL encoder alone (a minute instead of several: raw pixels'
3072-d probe is the slow part), for comparing short runs.

Writes the run's curves (``byol_jax.report``: loss, schedules, kNN top-1, collapse signals,
throughput, from metrics.jsonl) to --out (default: the workdir). The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags

from byol_jax import config_base, console, probes, report
from byol_jax import encoder as encoder_lib
from byol_jax.data import device_augment, pipeline, sources
from byol_jax.errors import UserError

_WORKDIR = flags.DEFINE_string("workdir", None, "The pretraining workdir (or a checkpoint folder).")
_OUT = flags.DEFINE_string("out", None, "Where the plots go (default: the workdir).")
_TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples", 10_000, "Labelled training subset size.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the training subset and of the random encoder.")
_IMAGE_SIZE = flags.DEFINE_integer(
  "image_size", 0, "Evaluation view size (0: the run's data.eval_image_size), e.g. 32 for native."
)
_BASELINES = flags.DEFINE_bool(
  "baselines", True, "Also evaluate the random encoder and raw pixels (--nobaselines: BYOL only)."
)
_PIXELS_SIZE = 32  # CIFAR-10's own resolution: the raw-pixel baseline is 32x32x3


def views_of(source: sources.DataSource, image_size: int, resize: int):
  """Evaluation views (float [N, S, S, 3] in [0, 1]) and labels of every example of ``source``."""
  images, labels = [], []
  for batch in pipeline.eval_batches(
    source, batch_size=500, image_size=image_size, resize_size=resize
  ):
    images.append(batch["image"][batch["mask"]])
    labels.append(batch["label"][batch["mask"]])
  return np.concatenate(images), np.concatenate(labels)


def random_encoder(
  weights: encoder_lib.EncoderWeights, seed: int, views: np.ndarray
) -> encoder_lib.Encoder:
  """The same architecture at initialisation, its BatchNorm statistics estimated on ``views``.

  With the initial moving statistics (mean 0, variance 1) activations grow layer after layer;
  running the training-mode forward pass over the data first gives the random network the
  statistics a trained one would have.
  """
  net = encoder_lib.encoder_network(weights.spec)
  size = weights.config.data.image_size
  params, state = jax.jit(lambda k: net.init(k, np.zeros((1, size, size, 3), np.float32), True))(
    jax.random.PRNGKey(seed)
  )
  update_stats = jax.jit(
    lambda s, x: net.apply(params, s, device_augment.normalize(x), is_training=True)[1]
  )
  for _ in range(3):  # moving averages with decay 0.9: ~60 batches forget the initial values
    for start in range(0, len(views) - 499, 500):
      state = update_stats(state, views[start : start + 500])
  return encoder_lib.Encoder(
    encoder_lib.EncoderWeights(
      weights.spec, params, state, weights.config, 0, "random initialisation"
    )
  )


def evaluate(name: str, train_x, train_y, test_x, test_y, num_classes: int) -> dict[str, float]:
  t = time.perf_counter()
  linear = probes.linear_probe(train_x, train_y, test_x, test_y, num_classes, seed=_SEED.value)
  knn = probes.knn_accuracy(train_x, train_y, test_x, test_y, num_classes, k=200, temperature=0.1)
  result = dict(linear_top1=linear["top1"], linear_l2=linear["l2"], knn_top1=knn["top1"])
  print(
    f"{name:>14}: linear top-1 {100 * linear['top1']:5.2f}% (l2 {linear['l2']:g}), kNN top-1 "
    f"{100 * knn['top1']:5.2f}%  [{train_x.shape[1]}-d, {time.perf_counter() - t:.0f} s]",
    flush=True,
  )
  return result


def main(argv) -> None:
  del argv
  console.set_library_verbosity(flags.FLAGS["verbosity"].present)
  if not _WORKDIR.value:
    raise UserError("Pass --workdir=<the pretraining workdir>.")
  weights = encoder_lib.restore_encoder(_WORKDIR.value)
  config = weights.config
  if config.data.source != "folder" or config.data.holdout <= 0:
    raise UserError(
      f"{weights.source} was not trained on an image folder with a hold-out "
      "(config.data.holdout): use configs/byol_cifar10_cpu.py."
    )
  size, resize = config_base.eval_view_sizes(config.data, _IMAGE_SIZE.value)
  path, holdout, seed = config.data.path, config.data.holdout, config.data.holdout_seed
  t = time.perf_counter()
  train_all = sources.folder_source(path, holdout=holdout, holdout_seed=seed, subset="train")
  held = sources.folder_source(path, holdout=holdout, holdout_seed=seed, subset="holdout")
  count = min(_TRAIN_EXAMPLES.value, train_all.num_examples - 1)
  keep = sources.stratified_holdout(train_all.labels, count, _SEED.value)[1]
  train_subset = sources.subset_source(train_all, keep)
  train_x, train_y = views_of(train_subset, size, resize)
  test_x, test_y = views_of(held, size, resize)
  num_classes = max(train_all.num_classes, held.num_classes)
  print(
    f"{len(train_y)} training and {len(test_y)} held-out images of {path} at {size}x{size} "
    f"({time.perf_counter() - t:.0f} s to read).",
    flush=True,
  )
  results: dict = dict(
    checkpoint=weights.source, step=weights.step, encoder=weights.spec.name, image_size=size
  )

  def score(name: str, features, train_views=train_x, test_views=test_x) -> dict:
    return evaluate(name, features(train_views), train_y, features(test_views), test_y, num_classes)

  results["byol"] = score("BYOL", encoder_lib.Encoder(weights).embed_views)
  if _BASELINES.value:
    results["random_init"] = score(
      "random init", random_encoder(weights, _SEED.value, train_x).embed_views
    )
    # Pixels at the images' own resolution, whatever size the encoders see.
    native = [train_x, test_x]
    if (size, resize) != (_PIXELS_SIZE, _PIXELS_SIZE):
      native = [views_of(s, _PIXELS_SIZE, _PIXELS_SIZE)[0] for s in (train_subset, held)]
    results["pixels"] = score("raw pixels", lambda x: x.reshape(len(x), -1), *native)
  out = _OUT.value or (
    _WORKDIR.value if os.path.isdir(os.path.join(_WORKDIR.value, "checkpoints")) else "."
  )
  os.makedirs(out, exist_ok=True)
  metrics = os.path.join(os.path.dirname(os.path.dirname(weights.source)), "metrics.jsonl")
  if os.path.isfile(metrics):
    results["plots"] = report.plot_curves(report.read_metrics(metrics), out)
  print(json.dumps(results))


if __name__ == "__main__":
  app.run(main)
