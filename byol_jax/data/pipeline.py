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
cost for small crops of large images.

Files that cannot be read or decoded at run time (which the folder pre-scan did not catch, or a
mount that went away) never shift the stream: every position yields exactly one example. An
example that fails is replaced by the next example of its local batch that loaded (cyclically;
zeros if none did), a function of the batch's positions and of which files fail. Hence a resumed
run repeats the uninterrupted run's batches exactly whenever the same files fail in both; a file
that fails in only one of them (deleted or repaired in between) changes only the batches that
hold it. Failures are caught per example by ``ignore_errors`` inside one small dataset per batch,
counted on the host, and each bad file is warned about once (``warning: ...``); when more than
half of a process's recent examples fail, the run stops with a UserError. Evaluation batches keep
a failed example's slot, masked, with its source index, so features stay paired with files.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Callable, Iterator

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
from byol_jax.data.in_memory import check_eval_sizes
from byol_jax.data.sources import DataSource, TfdsSource
from byol_jax.errors import UserError
from byol_jax.parallel import local_batch_size, num_eval_batches

# Tags that keep the shuffle and augmentation random streams apart.
_SHUFFLE_TAG = 0x5EED5
_AUGMENT_TAG = 0xA06
# A process stops when more than half of its last examples failed to load, counted over at least
# this many batches and examples: enough that scattered bad files never stop a run, few enough
# that a missing folder stops it within a few steps.
_FAILURE_WINDOW_BATCHES = 3
_FAILURE_WINDOW_EXAMPLES = 32
# Bad files named one by one; further ones are only counted.
_MAX_WARNED_FILES = 100


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


def _fill_slots(
  slots: tf.Tensor, rows: dict[str, tf.Tensor], n: tf.Tensor, substitute: bool
) -> dict[str, tf.Tensor]:
  """``n`` rows from the rows that loaded (``slots``: their ascending places among the ``n``).

  A slot that did not load gets "ok" False and, with ``substitute``, a copy of the next slot that
  did (cyclically), else zeros; zeros too when none loaded.
  """
  m = tf.shape(slots)[0]

  def patched() -> dict[str, tf.Tensor]:
    place = tf.range(n)
    # Each slot's row if it loaded, else the row of the next slot that did (m past the last).
    row = tf.searchsorted(slots, place)
    ok = tf.equal(tf.gather(tf.concat([slots, [-1]], 0), row), place)
    source = row % tf.maximum(m, 1) if substitute else tf.where(ok, row, m)
    out = {}
    for key, value in rows.items():
      zero = tf.zeros(tf.concat([[1], tf.shape(value)[1:]], 0), value.dtype)
      out[key] = tf.gather(tf.concat([value, zero], 0), source)
    return {**out, "ok": ok}

  # The common case copies nothing.
  return tf.cond(tf.equal(m, n), lambda: {**rows, "ok": tf.ones([n], tf.bool)}, patched)


def _load_batches(
  inputs: tf.data.Dataset,
  load: Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]],
  *,
  max_rows: int,
  substitute: bool,
) -> tf.data.Dataset:
  """``load`` of each input of each batch of ``inputs``: one output row per input, always.

  ``inputs`` yields dicts of [n, ...] tensors (n <= ``max_rows``), "index" among them. An input
  whose ``load`` raises (a file that cannot be read or decoded) gets a row with "ok" False (see
  :func:`_fill_slots`). Output batches hold ``load``'s keys, "ok" and the inputs' "index".

  TensorFlow has no decode that cannot fail, so ``ignore_errors`` catches the errors, inside one
  small dataset per batch (a per-batch cost); several batches load at once, so the cores stay
  busy across batch boundaries.
  """

  def one_batch(x: dict[str, tf.Tensor]) -> tf.data.Dataset:
    n = tf.shape(x["index"])[0]
    loaded = (
      tf.data.Dataset.from_tensor_slices((tf.range(n), x))
      .map(lambda j, xj: (j, load(xj)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      .ignore_errors()
    )
    # When nothing loaded, batch() yields nothing: an empty batch stands in.
    none_loaded = tf.data.Dataset.from_tensors(
      (
        tf.zeros([0], tf.int32),
        {k: tf.zeros([0, *spec.shape], spec.dtype) for k, spec in loaded.element_spec[1].items()},
      )
    )
    return (
      loaded.batch(max_rows)
      .concatenate(none_loaded)
      .take(1)
      .map(lambda slots, rows: {**_fill_slots(slots, rows, n, substitute), "index": x["index"]})
    )

  cycle = max(2, -(-(os.cpu_count() or 1) // max_rows))
  return inputs.interleave(
    one_batch, cycle_length=cycle, num_parallel_calls=cycle, deterministic=True
  )


def _with_batch_size(batch: dict[str, tf.Tensor], size: int) -> dict[str, tf.Tensor]:
  return {k: tf.ensure_shape(v, [size, *v.shape[1:]]) for k, v in batch.items()}


class _FailureCheck:
  """Host-side bookkeeping of the examples of a process that failed to load.

  Counts them, warns once per bad file (one line), and raises UserError when more than half of
  the examples of the last few batches failed (files unreadable, a folder gone).
  """

  def __init__(self, source: DataSource, batch_size: int):
    self.source = source
    self.total = 0
    self.warned: set[int] = set()
    window = max(_FAILURE_WINDOW_BATCHES, math.ceil(_FAILURE_WINDOW_EXAMPLES / batch_size))
    self.recent: collections.deque[int] = collections.deque(maxlen=window)
    self.batch_size = batch_size
    self.limit = window * batch_size // 2

  def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch without its "ok" and "index" entries, after checking them."""
    failed = batch.pop("index")[~batch.pop("ok")]
    self.recent.append(len(failed))
    if not len(failed):
      return batch
    self.total += len(failed)
    if sum(self.recent) > self.limit:
      seen = len(self.recent) * self.batch_size
      raise UserError(
        f"{sum(self.recent)} of the last {seen} examples of {self.source.name} could not be read "
        f"or decoded (e.g. {self.source.describe(int(failed[0]))}): the files are unreadable or "
        "their folder is gone; check that the data is in place and readable (mounted), then rerun "
        "the same command to resume."
      )
    for index in np.unique(failed).tolist():
      if index in self.warned or len(self.warned) >= _MAX_WARNED_FILES:
        continue
      self.warned.add(index)
      what = self.source.describe(index) if index >= 0 else f"an example of {self.source.name}"
      more = " (further ones are only counted)" if len(self.warned) == _MAX_WARNED_FILES else ""
      print(
        f"warning: {what} could not be read or decoded; it is replaced by another example of its "
        f"batch ({self.total} failed example(s) so far){more}.",
        flush=True,
      )
    return batch


def _checked_batches(
  ds: tf.data.Dataset, source: DataSource, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
  """The numpy batches of a :func:`pretrain_dataset`, with its load failures checked."""
  check = _FailureCheck(source, batch_size)
  batches = ds.as_numpy_iterator()
  while True:
    try:
      batch = next(batches)
    except StopIteration:
      return
    except (tf.errors.NotFoundError, tf.errors.PermissionDeniedError, tf.errors.DataLossError) as e:
      # Reads outside the per-example loads (TFDS record files) fail the whole stream.
      raise UserError(
        f"Reading {source.name} failed ({' '.join(e.message.split())[:200]}): check that the "
        "data is in place and readable (mounted), then rerun the same command to resume."
      ) from e
    yield check(batch)


def _example_fn(
  seed: int,
  image_size: int,
  view1: AugmentParams,
  view2: AugmentParams | None,
  host_colour_ops: bool,
):
  """``make(position, example, encoded)``: the augmented training example of one position.

  ``encoded``: ``example["image"]`` holds file bytes, decoded only where the crops need it.
  Without ``view2`` it is one fully augmented view ``{"image", "label"}``.
  """

  def make(pos: tf.Tensor, example: dict[str, tf.Tensor], encoded: bool) -> dict[str, tf.Tensor]:
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

  return make


def _random_access_inputs(source: DataSource, position, seed: int, make_example):
  """(slots, load) of a random-access source: each position's shuffled index, read on load."""
  n = source.num_examples
  encoded = source.encoded_reads
  read = source.read_encoded if encoded else source.read

  def slot(k: tf.Tensor) -> dict[str, tf.Tensor]:
    pos = position(k)
    return {"position": pos, "index": shuffled_index(seed, pos, n)}

  def load(x: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return make_example(x["position"], read(x["index"]), encoded)

  return tf.data.Dataset.counter(0).map(slot), load


def _tfds_inputs(
  source: DataSource,
  position,
  make_example,
  *,
  seed: int,
  start_step: int,
  batch: int,
  process_index: int,
  process_count: int,
  shuffle_buffer: int,
):
  """(slots, load) of a TFDS split read in order: this process's shard, reshuffled each epoch
  by a buffer, resumed by skipping the records of the steps done."""
  if not isinstance(source, TfdsSource):
    raise TypeError(f"Unsupported sequential source {type(source).__name__}.")
  n_local = source.shard_size(process_index, process_count)
  if n_local <= 0:
    raise UserError(
      f"Process {process_index} of {process_count} gets no examples of {source.name}: "
      "use fewer processes or a larger split."
    )
  start_epoch, skip = divmod(start_step * batch, n_local)
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

  def load(x: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return make_example(x["position"], x["record"], encoded=True)

  stream = tf.data.Dataset.counter(start_epoch).flat_map(epoch_records).skip(skip)
  # TFDS records have no file name: index -1.
  slots = tf.data.Dataset.zip(tf.data.Dataset.counter(0), stream).map(
    lambda k, record: {
      "position": position(k),
      "index": tf.constant(-1, tf.int64),
      "record": record,
    }
  )
  return slots, load


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
  supervised batches of :func:`train_batches`). Batches also hold "ok" (bool [B]: False where the
  example failed to load and was replaced, see the module docstring) and "index" (int64 [B]: the
  source index of each position's example, -1 for TFDS), which the batch iterators check and drop.
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

  make_example = _example_fn(seed, image_size, view1, view2, host_colour_ops)
  if source.random_access:
    inputs, load = _random_access_inputs(source, position, seed, make_example)
  else:
    inputs, load = _tfds_inputs(
      source,
      position,
      make_example,
      seed=seed,
      start_step=start_step,
      batch=batch,
      process_index=process_index,
      process_count=process_count,
      shuffle_buffer=shuffle_buffer,
    )
  # One example per position, whatever fails to decode: batches stay aligned with positions.
  ds = _load_batches(inputs.batch(batch), load, max_rows=batch, substitute=True)
  ds = ds.map(lambda b: _with_batch_size(b, batch))
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

  Raises:
    UserError: when more than half of the recent examples could not be read or decoded (files
      unreadable, a folder gone); single bad files are replaced and warned about instead.
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
  yield from _checked_batches(ds, source, local_batch_size(global_batch_size, process_count))


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
  yield from _checked_batches(ds, source, local_batch_size(global_batch_size, process_count))


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
  (:func:`num_eval_batches`), the last ones padded. An example that cannot be read or decoded
  keeps its slot, masked; they are reported in one warning line at the end of the pass, and a
  pass in which none loaded is a UserError.

  Yields:
    {"image": float32 [B, S, S, 3] in [0, 1], "label": int32 [B], "mask": bool [B],
    "index": int64 [B]}, mask True for the examples that loaded (padding and failed examples
    have label -1 and a zero image); index is the example's index in ``source`` (-1 for
    padding and for TFDS records).
  """
  batch = local_batch_size(batch_size, process_count)
  check_eval_sizes(image_size, resize_size)

  def prepare(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {
      "image": centre_crop(example["image"], image_size, resize_size),
      "label": tf.cast(example["label"], tf.int32),
    }

  inputs, load = _eval_inputs(source, process_index, process_count, prepare)
  ds = _load_batches(inputs.batch(batch), load, max_rows=batch, substitute=False)
  ds = ds.map(lambda b: _pad_eval_batch(b, batch))
  padding = tf.data.Dataset.from_tensors(
    {
      "image": tf.zeros([batch, image_size, image_size, 3], tf.float32),
      "label": tf.fill([batch], -1),
      "mask": tf.zeros([batch], tf.bool),
      "index": tf.fill([batch], tf.constant(-1, tf.int64)),
      "failed": tf.zeros([batch], tf.bool),
    }
  ).repeat()
  total = num_eval_batches(source.num_examples, batch_size, process_count)
  ds = ds.concatenate(padding).take(total)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
  failed, loaded = [], 0
  for b in ds.as_numpy_iterator():
    failed.extend(b["index"][b.pop("failed")].tolist())
    loaded += int(b["mask"].sum())
    yield b
  _report_eval_failures(source, failed, loaded)


def _eval_inputs(
  source: DataSource,
  process_index: int,
  process_count: int,
  prepare: Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]],
) -> tuple[tf.data.Dataset, Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]]]:
  """This process's evaluation inputs ({"index", ...}, storage order) and the load of one."""
  if source.random_access:
    indices = source.shard_indices(process_index, process_count)
    inputs = tf.data.Dataset.from_tensor_slices({"index": indices})
    return inputs, lambda x: prepare(source.read(x["index"]))
  if not isinstance(source, TfdsSource):
    raise TypeError(f"Unsupported sequential source {type(source).__name__}.")
  records = source.records(process_index, process_count)
  inputs = records.map(lambda r: {"index": tf.constant(-1, tf.int64), "record": r})
  return inputs, lambda x: prepare(TfdsSource.decode(x["record"]))


def _pad_eval_batch(b: dict[str, tf.Tensor], size: int) -> dict[str, tf.Tensor]:
  """A loaded evaluation batch with failed slots masked (label -1), padded to ``size`` rows."""
  ok = b["ok"]

  def rows(value: tf.Tensor, fill) -> tf.Tensor:
    padding = [[0, size - tf.shape(value)[0]]] + [[0, 0]] * (value.shape.rank - 1)
    return tf.pad(value, padding, constant_values=fill)

  out = {
    "image": rows(b["image"], 0),
    "label": rows(tf.where(ok, b["label"], -1), -1),
    "mask": rows(ok, False),
    "index": rows(b["index"], -1),
    "failed": rows(tf.logical_not(ok), False),
  }
  return _with_batch_size(out, size)


def _report_eval_failures(source: DataSource, failed: list[int], loaded: int) -> None:
  """One warning line for the examples an evaluation pass left out; UserError if all were."""
  if not failed:
    return
  first = source.describe(failed[0]) if failed[0] >= 0 else f"an example of {source.name}"
  if not loaded:
    raise UserError(
      f"None of the {len(failed)} examples of {source.name} could be read or decoded (e.g. "
      f"{first}): check that the data is in place and readable (mounted)."
    )
  print(
    f"warning: {len(failed)} example(s) of {source.name} could not be read or decoded and were "
    f"left out (first: {first}).",
    flush=True,
  )


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
