"""Features of evaluation views under a ``pmap``-ed encoder, for every evaluation of the package.

The linear evaluation, fine-tuning's test passes and the kNN monitor all encode centre-crop
batches (``features.eval_views``, the last one padded and masked) with a replicated encoder;
this is that loop, written once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import haiku as hk
import jax
import numpy as np
from jax.experimental import multihost_utils

from byol_jax import parallel
from byol_jax.data import in_memory, sources
from byol_jax.errors import UserError


def eval_batch_size(batch_size: int) -> int:
  """The global evaluation batch nearest ``batch_size`` that splits over every device."""
  n = jax.device_count()
  return max(n, batch_size // n * n)


def eval_views(
  source: sources.DataSource, image_size: int, resize_size: int, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
  """Centre-crop evaluation batches of one process's shard (the last one padded, see mask):
  computed by JAX for images held in memory, by tf.data for files and TFDS."""
  common = dict(
    batch_size=batch_size,
    image_size=image_size,
    resize_size=resize_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  held = in_memory.arrays_of(source)
  if held is not None:
    return in_memory.eval_batches(held, **common)
  from byol_jax.data import pipeline

  return pipeline.eval_batches(source, **common)


def extract_features(
  p_encode,
  params: hk.Params,
  state: hk.State,
  batches: Iterable[dict[str, np.ndarray]],
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
