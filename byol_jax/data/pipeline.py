"""Batches for pre-training (two augmented views per image) and for evaluation.

Pre-training order and augmentation are deterministic functions of the seed and the *global
position* of an example in the stream: position ``p = step * global_batch_size + slot`` where
``slot`` is the example's place in the global batch (process ``i`` owns slots
``[i * B, (i + 1) * B)`` with ``B = global_batch_size // process_count``).

* Random-access sources (synthetic, arrays, folders): the stream is the concatenation of epochs,
  each a stateless permutation of all examples (``tf.random.experimental.index_shuffle`` keyed
  by (seed, epoch)); position p reads example ``perm[p // N][p % N]``. Batches wrap across epoch
  boundaries (nothing is dropped) and every example appears once per epoch. Processes read
  disjoint slots, hence disjoint examples within an epoch, and the global batch does not depend
  on the number of processes. ``start_step`` is pure arithmetic: no replay.
* TFDS sources: each process reads its own ``tfds.even_splits`` shard, shuffled per epoch with a
  buffer of ``shuffle_buffer`` encoded records and a seed derived from (seed, epoch, process).
  Resuming jumps to the right epoch and skips the rest of the consumed records without decoding
  them (cheap, but it still reads them).

Each example's two views use seeds derived from (seed, p) by stateless ops, so the output does
not depend on tf.data threading. Sources that hold encoded files (image folders, TFDS) are decoded
inside the pipeline: JPEGs only within the window that holds both crops, with the crop boxes
sampled from the header's shape, which gives the pixels of a full decode at a fraction of the
cost for small crops of large images. Files that fail to decode at run time (which the folder
pre-scan did not catch) are dropped, shifting later examples by one slot.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from byol_jax.data.augment import (
  AugmentParams,
  augment_view,
  centre_crop,
  finish_view,
  finish_view_uint8,
  sample_crop_box,
  view_seeds,
)
from byol_jax.data.sources import DataSource, TfdsSource
from byol_jax.errors import UserError

# Tags that keep the shuffle and augmentation random streams apart.
_SHUFFLE_TAG = 0x5EED5
_AUGMENT_TAG = 0xA06


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  """Per-process batch size; a UserError unless it divides evenly."""
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise UserError(
      f"The batch size {global_batch_size} must be a positive multiple of the number of "
      f"processes ({process_count}): change --config.batch_size."
    )
  return global_batch_size // process_count


def _base_seed(seed: int, tag: int) -> tf.Tensor:
  return tf.constant([seed, tag], tf.int64)


def example_seed(seed: int, position: tf.Tensor) -> tf.Tensor:
  """Shape-[2] augmentation seed of the example at global stream ``position``."""
  return tf.random.experimental.stateless_fold_in(
    _base_seed(seed, _AUGMENT_TAG), tf.cast(position, tf.int64)
  )


def shuffled_index(seed: int, position: tf.Tensor, num_examples: int) -> tf.Tensor:
  """Example index at global stream ``position``: a fresh permutation of all examples per epoch."""
  position = tf.cast(position, tf.int64)
  epoch = position // num_examples
  epoch_seed = tf.random.experimental.stateless_fold_in(_base_seed(seed, _SHUFFLE_TAG), epoch)
  return tf.random.experimental.index_shuffle(
    position % num_examples, epoch_seed, tf.constant(num_examples - 1, tf.int64)
  )


def _finish(
  crop: tf.Tensor, seeds: tuple, params: AugmentParams, image_size: int, colour_ops: bool
) -> tf.Tensor:
  _, flip_seed, colour_seed = seeds
  if colour_ops:
    return finish_view(crop, flip_seed, colour_seed, params, image_size)
  # Without colour ops the device finishes the job: uint8 cuts host-to-device bytes by 4.
  return finish_view_uint8(crop, flip_seed, params, image_size)


def two_views(
  image: tf.Tensor,
  seed: tf.Tensor,
  view1: AugmentParams,
  view2: AugmentParams,
  image_size: int,
  colour_ops: bool = True,
) -> tuple[tf.Tensor, tf.Tensor]:
  """The two augmented views of one decoded image, from one shape-[2] seed.

  float32 in [0, 1] with colour ops, else uint8 after crop, resize and flip only.
  """
  seeds = tf.random.experimental.stateless_split(seed, num=2)
  views = []
  for view_seed, params in ((seeds[0], view1), (seeds[1], view2)):
    s = view_seeds(view_seed)
    shape = tf.shape(image)
    off_y, off_x, box_h, box_w = sample_crop_box(shape[0], shape[1], s[0], params)
    crop = tf.slice(image, tf.stack([off_y, off_x, 0]), tf.stack([box_h, box_w, 3]))
    views.append(_finish(crop, s, params, image_size, colour_ops))
  return views[0], views[1]


def encoded_crops(
  data: tf.Tensor, crop_seeds: list[tf.Tensor], params: list[AugmentParams]
) -> list[tf.Tensor]:
  """uint8 random-resized-crop windows (before the resize) of an encoded image, one per seed.

  JPEGs are decoded only inside the union of the windows, with the box sampled from the header's
  shape (the original BYOL code and big_vision do the same); other formats are fully decoded.
  The pixels equal those of a full decode followed by slicing.
  """

  def boxes(height: tf.Tensor, width: tf.Tensor) -> list[tuple[tf.Tensor, ...]]:
    return [sample_crop_box(height, width, s, p) for s, p in zip(crop_seeds, params)]

  def from_jpeg() -> tuple[tf.Tensor, ...]:
    shape = tf.image.extract_jpeg_shape(data)
    height, width = shape[0], shape[1]
    bs = boxes(height, width)
    # A one-pixel margin: libjpeg's chroma upsampling treats the window's edge as the image's,
    # so without it the last column of a crop can differ from that of a full decode.
    y0 = tf.maximum(tf.reduce_min(tf.stack([b[0] for b in bs])) - 1, 0)
    x0 = tf.maximum(tf.reduce_min(tf.stack([b[1] for b in bs])) - 1, 0)
    y1 = tf.minimum(tf.reduce_max(tf.stack([b[0] + b[2] for b in bs])) + 1, height)
    x1 = tf.minimum(tf.reduce_max(tf.stack([b[1] + b[3] for b in bs])) + 1, width)
    window = tf.image.decode_and_crop_jpeg(data, tf.stack([y0, x0, y1 - y0, x1 - x0]), channels=3)
    return tuple(
      tf.slice(window, tf.stack([oy - y0, ox - x0, 0]), tf.stack([h, w, 3])) for oy, ox, h, w in bs
    )

  def from_other() -> tuple[tf.Tensor, ...]:
    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    shape = tf.shape(image)
    return tuple(
      tf.slice(image, tf.stack([oy, ox, 0]), tf.stack([h, w, 3]))
      for oy, ox, h, w in boxes(shape[0], shape[1])
    )

  crops = tf.cond(tf.io.is_jpeg(data), from_jpeg, from_other)
  return [tf.ensure_shape(c, [None, None, 3]) for c in crops]


def two_views_encoded(
  data: tf.Tensor,
  seed: tf.Tensor,
  view1: AugmentParams,
  view2: AugmentParams,
  image_size: int,
  colour_ops: bool = True,
) -> tuple[tf.Tensor, tf.Tensor]:
  """:func:`two_views` of an encoded image (JPEG, PNG, ...); same seeds, same pixels."""
  seeds = tf.random.experimental.stateless_split(seed, num=2)
  s1, s2 = view_seeds(seeds[0]), view_seeds(seeds[1])
  c1, c2 = encoded_crops(data, [s1[0], s2[0]], [view1, view2])
  return (
    _finish(c1, s1, view1, image_size, colour_ops),
    _finish(c2, s2, view2, image_size, colour_ops),
  )


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  # Per-example ops are small: parallelism across examples beats it within one op.
  options.threading.max_intra_op_parallelism = 1
  return options


def pretrain_dataset(
  source: DataSource,
  *,
  global_batch_size: int,
  image_size: int,
  view1: AugmentParams,
  view2: AugmentParams | None,
  seed: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  host_colour_ops: bool = True,
  shuffle_buffer: int = 10_000,
) -> tf.data.Dataset:
  """The infinite tf.data pipeline behind :func:`pretrain_batches` (same arguments).

  With ``view2=None`` each example is one fully augmented view ``{"image", "label"}`` (the
  supervised batches of :func:`train_batches`).
  """
  batch = local_batch_size(global_batch_size, process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"Bad process_index={process_index} for process_count={process_count}.")
  if start_step < 0:
    raise ValueError(f"start_step={start_step} must be non-negative.")
  first_slot = process_index * batch

  def position(k: tf.Tensor) -> tf.Tensor:
    # k counts this process's examples from start_step on.
    step = start_step + k // batch
    return step * global_batch_size + first_slot + k % batch

  def make_example(
    pos: tf.Tensor, example: dict[str, tf.Tensor], encoded: bool
  ) -> dict[str, tf.Tensor]:
    # encoded: example["image"] holds file bytes, decoded here only where the crops need it.
    label = tf.cast(example["label"], tf.int32)
    if view2 is None:
      if encoded:
        crop_seed, flip_seed, colour_seed = view_seeds(example_seed(seed, pos))
        (crop,) = encoded_crops(example["image"], [crop_seed], [view1])
        view = finish_view(crop, flip_seed, colour_seed, view1, image_size)
      else:
        view = augment_view(example["image"], example_seed(seed, pos), view1, image_size)
      return {"image": view, "label": label}
    views = two_views_encoded if encoded else two_views
    v1, v2 = views(
      example["image"], example_seed(seed, pos), view1, view2, image_size, host_colour_ops
    )
    return {"view1": v1, "view2": v2, "label": label}

  if source.random_access:
    n = source.num_examples
    encoded = source.encoded_reads
    read = source.read_encoded if encoded else source.read

    def load(k: tf.Tensor) -> dict[str, tf.Tensor]:
      pos = position(k)
      return make_example(pos, read(shuffled_index(seed, pos, n)), encoded)

    ds = tf.data.Dataset.counter(0).map(
      load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
  else:
    if not isinstance(source, TfdsSource):
      raise TypeError(f"Unsupported sequential source {type(source).__name__}.")
    n_local = source.shard_size(process_index, process_count)
    if n_local <= 0:
      raise UserError(
        f"Process {process_index} of {process_count} gets no examples of {source.name}: "
        "use fewer processes or a larger split."
      )
    consumed = start_step * batch
    start_epoch, skip = divmod(consumed, n_local)
    records = source.records(process_index, process_count)
    base = tf.constant([seed, _SHUFFLE_TAG + 1 + process_index], tf.int64)

    def epoch_records(epoch: tf.Tensor) -> tf.data.Dataset:
      epoch_seed = tf.random.experimental.stateless_fold_in(base, epoch)
      shuffle_seed = tf.random.stateless_uniform(
        [], epoch_seed, minval=None, maxval=None, dtype=tf.int64
      )
      return records.shuffle(
        max(1, min(shuffle_buffer, n_local)), seed=shuffle_seed, reshuffle_each_iteration=False
      )

    stream = tf.data.Dataset.counter(start_epoch).flat_map(epoch_records).skip(skip)
    ds = tf.data.Dataset.zip(tf.data.Dataset.counter(0), stream).map(
      lambda k, record: make_example(position(k), record, encoded=True),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True,
    )
  # Only files that fail to decode raise here; dropping them beats crashing a long run.
  ds = ds.ignore_errors(log_warning=True)
  ds = ds.batch(batch, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options())


def pretrain_batches(
  source: DataSource,
  *,
  global_batch_size: int,
  image_size: int,
  view1: AugmentParams,
  view2: AugmentParams,
  seed: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  host_colour_ops: bool = True,
  shuffle_buffer: int = 10_000,
  num_batches: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Pre-training batches for this process, starting at step ``start_step``.

  Endless, or ``num_batches`` of them. A run that knows its length should say so: a finite
  stream is exhausted with no work in flight, while dropping an endless tf.data iterator blocks
  until its worker threads finish (tens of seconds at the end of CPU runs).

  Yields:
    {"view1": [B, S, S, 3], "view2": [B, S, S, 3], "label": int32 [B]} with
    B = global_batch_size // process_count and S = image_size. Views are float32 in [0, 1] after
    the full augmentation, or, with ``host_colour_ops=False``, uint8 after crop and flip only (then
    apply ``device_augment.colour_augment(to_float(views), key, params)`` on the device).
  """
  ds = pretrain_dataset(
    source,
    global_batch_size=global_batch_size,
    image_size=image_size,
    view1=view1,
    view2=view2,
    seed=seed,
    start_step=start_step,
    process_index=process_index,
    process_count=process_count,
    host_colour_ops=host_colour_ops,
    shuffle_buffer=shuffle_buffer,
  )
  if num_batches is not None:
    ds = ds.take(num_batches)
  yield from ds.as_numpy_iterator()


def train_batches(
  source: DataSource,
  *,
  global_batch_size: int,
  image_size: int,
  params: AugmentParams,
  seed: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  shuffle_buffer: int = 10_000,
) -> Iterator[dict[str, np.ndarray]]:
  """Endless supervised training batches (linear evaluation, fine-tuning): one view per image.

  Same order and determinism as :func:`pretrain_batches`. Yields {"image": float32 [B, S, S, 3]
  in [0, 1] augmented with ``params``, "label": int32 [B]}, B = global_batch_size // process_count.
  """
  ds = pretrain_dataset(
    source,
    global_batch_size=global_batch_size,
    image_size=image_size,
    view1=params,
    view2=None,
    seed=seed,
    start_step=start_step,
    process_index=process_index,
    process_count=process_count,
    shuffle_buffer=shuffle_buffer,
  )
  yield from ds.as_numpy_iterator()


def num_eval_batches(num_examples: int, batch_size: int, process_count: int = 1) -> int:
  """Number of batches :func:`eval_batches` yields on every process."""
  local = local_batch_size(batch_size, process_count)
  return math.ceil(math.ceil(num_examples / process_count) / local)


def eval_batches(
  source: DataSource,
  *,
  batch_size: int,
  image_size: int,
  resize_size: int,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
  """One pass over this process's shard: short side resized to ``resize_size``, centre crop.

  ``batch_size`` is global (as in :func:`pretrain_batches`); each process yields
  ``batch_size // process_count`` examples per batch and the same number of batches
  (:func:`num_eval_batches`), the last ones padded.

  Yields:
    {"image": float32 [B, S, S, 3] in [0, 1], "label": int32 [B], "mask": bool [B]}, mask True
    for real examples (padding has label -1 and a zero image).
  """
  batch = local_batch_size(batch_size, process_count)
  if resize_size < image_size:
    raise UserError(
      f"eval resize_size={resize_size} must be at least image_size={image_size}: "
      "raise --config.data.eval_resize."
    )
  ds = source.dataset(process_index, process_count)

  def prepare(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {
      "image": centre_crop(example["image"], image_size, resize_size),
      "label": tf.cast(example["label"], tf.int32),
      "mask": tf.constant(True),
    }

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors(log_warning=True)
  padding = tf.data.Dataset.from_tensors(
    {
      "image": tf.zeros([image_size, image_size, 3], tf.float32),
      "label": tf.constant(-1, tf.int32),
      "mask": tf.constant(False),
    }
  ).repeat()
  total = num_eval_batches(source.num_examples, batch_size, process_count) * batch
  ds = ds.concatenate(padding).take(total).batch(batch, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
  yield from ds.as_numpy_iterator()


def augment_batch_numpy(
  images: np.ndarray,
  seed: int,
  params: AugmentParams,
  output_size: int,
  colour_ops: bool = True,
) -> np.ndarray:
  """Eagerly augments a uint8 or float [N, H, W, 3] array, image i with seed (seed, i).

  For tests and pictures; returns float32 [N, S, S, 3] in [0, 1].
  """
  base = tf.constant([seed, _AUGMENT_TAG], tf.int64)
  views = [
    augment_view(
      tf.convert_to_tensor(image),
      tf.random.experimental.stateless_fold_in(base, i),
      params,
      output_size,
      colour_ops,
    )
    for i, image in enumerate(images)
  ]
  return np.stack([v.numpy() for v in views])


def default_host_colour_ops(platform: str) -> bool:
  """Where the colour ops run by default on a JAX platform ("cpu", "gpu", "tpu", ...).

  Accelerators: on the device, as in the original code; the host then only decodes, crops,
  resizes and flips, and sends uint8 views. CPU-only: on the host (measured in BENCHMARKS.md).
  """
  return platform == "cpu"
