"""A dataset held in memory as one uint8 array, batched without TensorFlow (``data.pipeline="device"``).

Small datasets (CIFAR, STL-10) are decoded once, at the start of a run, into ``[N, H, W, 3]``
uint8 (CIFAR-10's 50,000 training images: 146 MiB). Each step then gathers its examples by
position, as the tf.data pipeline does (``byol_jax.data.pipeline``'s module docstring): position
``p = step * global_batch_size + slot`` reads example ``perm[p // N][p % N]`` of a fresh
permutation of all examples per epoch, keyed by (seed, epoch); process ``i`` reads slots
``[i * B, (i + 1) * B)``, so processes read disjoint examples within an epoch and the global batch
does not depend on the number of processes; resuming at a step is arithmetic. The permutation is
numpy's (not ``tf.random.experimental.index_shuffle``): the pipelines visit the examples in
different orders, with the same scheme.

The host sends each step's whole images (uint8, a few KiB each); the random resized crop, the
flip and the colour ops run in the step (``device_crop``, ``device_augment``), with keys from
each example's position in the global batch. Only :func:`decode_source` uses TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import numpy as np

from byol_jax.errors import UserError
from byol_jax.parallel import local_batch_size

_SHUFFLE_TAG = 0x5EED5
# The decoded images may take at most this fraction of the memory available at the start.
MEMORY_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class InMemoryImages:
  """Decoded images of equal size, uint8 [N, H, W, 3], and int32 labels [N] (-1: unlabelled)."""

  images: np.ndarray
  labels: np.ndarray

  @property
  def num_examples(self) -> int:
    return self.images.shape[0]


def available_memory_bytes() -> int:
  """Memory the kernel says is available to new allocations (MemAvailable), in bytes."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_fits(num_examples: int, image_shape: tuple[int, ...], name: str, budget: int) -> None:
  """UserError when ``num_examples`` images of ``image_shape`` (uint8) exceed ``budget`` bytes."""
  need = num_examples * int(np.prod(image_shape))
  if need > budget:
    raise UserError(
      f"data.pipeline='device' holds all {num_examples} images of {name} in memory "
      f"({need / 2**30:.1f} GiB as uint8 at {'x'.join(map(str, image_shape))}), more than the "
      f"{budget / 2**30:.1f} GiB it may use here: use --config.data.pipeline=tfdata."
    )


def decode_source(source, budget: int | None = None) -> InMemoryImages:
  """Decodes every example of ``source`` (all of it, in storage order) into memory.

  ``budget``: the most bytes the images may take (default: half the available memory); a
  UserError says so, and how to go on, when they would take more, or when sizes differ.
  """
  import tensorflow as tf

  budget = int(MEMORY_FRACTION * available_memory_bytes()) if budget is None else budget
  ds = source.dataset().map(lambda ex: (ex["image"], ex["label"]))
  ds = ds.prefetch(tf.data.AUTOTUNE)
  images, labels, shape = None, np.empty([source.num_examples], np.int32), None
  for i, (image, label) in enumerate(ds.as_numpy_iterator()):
    if shape is None:
      shape = image.shape
      check_fits(source.num_examples, shape, source.name, budget)
      images = np.empty((source.num_examples, *shape), np.uint8)
    if image.shape != shape:
      raise UserError(
        f"data.pipeline='device' needs images of one size, but {source.name} has "
        f"{'x'.join(map(str, shape))} and {'x'.join(map(str, image.shape))} ones (example {i}): "
        "use --config.data.pipeline=tfdata, or resize the images to one size first."
      )
    images[i], labels[i] = image, label
  if images is None:
    raise UserError(f"{source.name} holds no images.")
  return InMemoryImages(images, labels)


class _Permutations:
  """The per-epoch permutations of the examples, the last few kept."""

  def __init__(self, seed: int, num_examples: int):
    self.seed, self.n = seed, num_examples
    self.cache: dict[int, np.ndarray] = {}

  def __call__(self, epoch: int) -> np.ndarray:
    if epoch not in self.cache:
      if len(self.cache) > 2:
        self.cache.pop(min(self.cache))
      rng = np.random.default_rng([self.seed, _SHUFFLE_TAG, epoch])
      self.cache[epoch] = rng.permutation(self.n)
    return self.cache[epoch]

  def indices(self, positions: np.ndarray) -> np.ndarray:
    """The example index of each global stream position."""
    epochs, places = np.divmod(positions, self.n)
    out = np.empty_like(positions)
    for epoch in np.unique(epochs):
      at = epochs == epoch
      out[at] = self(int(epoch))[places[at]]
    return out


def batches(
  data: InMemoryImages,
  *,
  global_batch_size: int,
  seed: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  num_batches: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's pretraining batches from step ``start_step``: endless, or ``num_batches``.

  Yields {"image": uint8 [B, H, W, 3] (whole images), "label": int32 [B]},
  B = global_batch_size // process_count.
  """
  batch = local_batch_size(global_batch_size, process_count)
  permutations = _Permutations(seed, data.num_examples)
  slots = process_index * batch + np.arange(batch, dtype=np.int64)
  step = start_step
  while num_batches is None or step < start_step + num_batches:
    index = permutations.indices(step * global_batch_size + slots)
    yield {"image": data.images[index], "label": data.labels[index]}
    step += 1
