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
each example's position in the global batch; :func:`eval_batches` gives the evaluation views
(``device_crop.centre_view``). Images already in memory (array sources, prepared files) need no
TensorFlow; :func:`decode_source` uses it for files and TFDS.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import numpy as np

from byol_jax.data import sources
from byol_jax.errors import UserError
from byol_jax.parallel import local_batch_size, num_eval_batches

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


def arrays_of(source: sources.DataSource) -> InMemoryImages | None:
  """The images and labels of a source held in memory (an array source, a prepared file or a
  subset of one), read without TensorFlow; None for files and TFDS."""
  if isinstance(source, sources.SubsetSource):
    base = arrays_of(source.base)
    if base is None:
      return None
    return InMemoryImages(base.images[source.indices], base.labels[source.indices])
  if isinstance(source, sources.ArraySource):
    return InMemoryImages(source.images, source.labels)
  return None


def decode_source(source: sources.DataSource, budget: int | None = None) -> InMemoryImages:
  """Every example of ``source`` (all of it, in storage order) in memory: decoded by TensorFlow
  from files and TFDS, taken as they are from array sources and prepared files.

  ``budget``: the most bytes the images may take (default: half the available memory); a
  UserError says so, and how to go on, when they would take more, or when sizes differ.
  """
  budget = int(MEMORY_FRACTION * available_memory_bytes()) if budget is None else budget
  held = arrays_of(source)
  if held is not None:
    check_fits(held.num_examples, held.images.shape[1:], source.name, budget)
    return held
  import tensorflow as tf

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


def check_eval_sizes(image_size: int, resize_size: int) -> None:
  """UserError unless the evaluation view's crop fits in its resized image."""
  if resize_size < image_size:
    raise UserError(
      f"eval resize_size={resize_size} must be at least image_size={image_size}: "
      "raise --config.data.eval_resize."
    )


def eval_batches(
  data: InMemoryImages,
  *,
  batch_size: int,
  image_size: int,
  resize_size: int,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """One pass of evaluation views over this process's shard, as ``pipeline.eval_batches``
  yields them (same shards, batches, padding and keys) for images in memory, without TensorFlow.

  Views: ``device_crop.centre_view`` (the tf.data views to within 1e-3, see that module).
  """
  from byol_jax.data import device_crop

  batch = local_batch_size(batch_size, process_count)
  check_eval_sizes(image_size, resize_size)
  shard = np.array_split(np.arange(data.num_examples, dtype=np.int64), process_count)
  shard = shard[process_index]
  for b in range(num_eval_batches(data.num_examples, batch_size, process_count)):
    index = np.full([batch], -1, np.int64)
    chosen = shard[b * batch : (b + 1) * batch]
    index[: len(chosen)] = chosen
    # Whole batches (padding rows repeat example 0) keep one compiled shape.
    images = data.images[np.maximum(index, 0)]
    mask = index >= 0
    views = np.asarray(device_crop.centre_view(images, image_size, resize_size))
    yield {
      "image": np.where(mask[:, None, None, None], views, np.float32(0)),
      "label": np.where(mask, data.labels[np.maximum(index, 0)], -1).astype(np.int32),
      "mask": mask,
      "index": index,
    }
