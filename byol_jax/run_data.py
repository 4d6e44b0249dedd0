"""The data a run reads, from its config: the training split, the evaluation hold-out, subsets.

Shared by the drivers that read the config (``train``, ``evaluate``, ``monitor``), and the
driver of ``--config.mode=prepare``. Sources load TensorFlow only where they read files or TFDS:
prepared files and arrays need none.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from byol_jax.data import prepared, sources
from byol_jax.errors import UserError


def make_source(
  config: ml_collections.ConfigDict, split: str, subset: str = "train"
) -> sources.DataSource:
  """The data source of ``split``; for image folders and prepared files, ``subset`` picks the
  train or hold-out part."""
  d = config.data
  if d.source == "prepared":
    return prepared.load(
      d.path, split, holdout=d.holdout, holdout_seed=d.holdout_seed, subset=subset
    )
  return sources.make_source(
    d.source,
    name=d.name,
    data_dir=d.data_dir or None,
    path=d.path,
    split=split,
    synthetic_examples=d.synthetic_examples,
    synthetic_classes=d.synthetic_classes,
    image_size=d.image_size,
    seed=config.seed,
    holdout=d.holdout,
    holdout_seed=d.holdout_seed,
    subset=subset,
  )


def heldout_source(config: ml_collections.ConfigDict) -> sources.DataSource:
  """The labelled evaluation data: the hold-out of a folder (or of a prepared file when
  ``data.holdout`` is set), or ``data.eval_split`` otherwise."""
  if config.data.source == "prepared" and config.data.holdout > 0:
    return make_source(config, config.data.train_split, subset="holdout")
  if config.data.source == "folder":
    if config.data.holdout <= 0:
      raise UserError(
        "An image folder has no test split: hold out images with --config.data.holdout=N "
        "(e.g. 5000), or evaluate on another source."
      )
    return make_source(config, config.data.train_split, subset="holdout")
  return make_source(config, config.data.eval_split)


def require_labels(source: sources.DataSource, what: str) -> None:
  """UserError unless ``source`` is labelled."""
  if not source.has_labels:
    raise UserError(
      f"{what} needs labels but {source.name} is unlabelled (a flat folder): arrange the images "
      "as <path>/<class>/*.jpg."
    )


def _labels_or_zeros(source: sources.DataSource) -> np.ndarray:
  labels = getattr(source, "labels", None)
  return np.zeros([source.num_examples], np.int32) if labels is None else labels


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
    rest = make_source(config, f"{split}[:-{count}]")
    part = make_source(config, f"{split}[-{count}:]")
    return rest, part
  rest_idx, part_idx = sources.stratified_holdout(_labels_or_zeros(source), count, seed)
  return sources.subset_source(source, rest_idx), sources.subset_source(source, part_idx)


def at_most(
  source: sources.DataSource, count: int, seed: int, config: ml_collections.ConfigDict, split: str
) -> sources.DataSource:
  """At most ``count`` examples of ``source`` (the whole source for ``count <= 0``): stratified
  for random access, the first ``count`` records of ``split`` for TFDS."""
  if count <= 0 or count >= source.num_examples:
    return source
  if not source.random_access:
    return make_source(config, f"{split}[:{count}]")
  chosen = sources.stratified_holdout(_labels_or_zeros(source), count, seed)[1]
  return sources.subset_source(source, chosen)


def prepare(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """``--config.mode=prepare``: writes the training split (a folder: the whole folder, hold-out
  included) and, for TFDS, the evaluation split, to ``<workdir>/<split>.npz``; returns the paths.
  Train from them with ``--config.data.source=prepared --config.data.path=<workdir>``."""
  d = config.data
  if d.source not in ("folder", "tfds"):
    raise UserError(
      f"--config.mode=prepare reads an image folder or a TFDS dataset, not data.source={d.source!r}:"
      " pass --config.data.source=folder (or tfds) and its path (or name)."
    )
  os.makedirs(workdir, exist_ok=True)
  splits = [d.train_split] + ([d.eval_split] if d.source == "tfds" else [])
  written = []
  for split in splits:
    source = sources.make_source(
      d.source, name=d.name, data_dir=d.data_dir or None, path=d.path, split=split
    )
    path = prepared.split_path(workdir, split)
    if os.path.exists(path):
      raise UserError(f"{path} exists already: move it away or pass another --workdir.")
    size = prepared.prepare(source, path)
    print(
      f"Prepared {source.num_examples} images of {source.name}: {path} ({size / 2**20:.1f} MiB)"
    )
    written.append(path)
  return written
