"""Labelled subsets of a split for evaluation: a stratified fraction of the labels (the paper's
semi-supervised 1% / 10%), the labels of a source, and a TFDS subset kept encoded in memory."""

from __future__ import annotations

import numpy as np

from byol_jax.data import sources


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
