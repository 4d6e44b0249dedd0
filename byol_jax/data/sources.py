"""Where images come from: a procedural synthetic set, in-memory arrays, image folders and TFDS.

Every source yields examples ``{"image": uint8 [H, W, 3], "label": int32}``, the label being -1
when the data is unlabelled. Sources backed by memory or by files (synthetic, arrays, folders)
are *random access*: :meth:`DataSource.read` maps an example index to the example, which lets the
pipeline shuffle with a stateless permutation per epoch and resume at any step without replay.
TFDS sources are sequential: :meth:`TfdsSource.records` streams one process's shard.
"""

from __future__ import annotations

import concurrent.futures
import os
import warnings
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from byol_jax.errors import UserError

if TYPE_CHECKING:
  import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Full decoding of every file at start-up is cheap for CIFAR-sized folders but not for ImageNet.
FULL_CHECK_MAX_FILES = 100_000
SHAPE_NAMES = (
  "disc",
  "square",
  "triangle",
  "plus",
  "ring",
  "horizontal_stripes",
  "vertical_stripes",
  "diamond",
  "x_cross",
  "checkerboard",
)


class DataSource:
  """A dataset of (image, label) examples.

  Attributes:
    name: a short description for logs.
    num_examples: number of examples in the source (all processes together).
    num_classes: number of classes, 0 when unlabelled.
    random_access: whether :meth:`read` is available.
  """

  name: str
  num_examples: int
  num_classes: int
  random_access: bool = True
  # Whether read_encoded() gives the undecoded file bytes, so that the pipeline can decode only
  # the crop windows of JPEGs (the costliest host step for large images).
  encoded_reads: bool = False

  @property
  def has_labels(self) -> bool:
    """Whether the examples carry class labels (otherwise every label is -1)."""
    return self.num_classes > 0

  def read(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
    """The example at int64 ``index`` (in [0, num_examples)), usable inside tf.data maps."""
    raise NotImplementedError(f"{type(self).__name__} is not random access.")

  def read_encoded(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
    """The example at ``index`` as {"image": encoded bytes, "label"}, when ``encoded_reads``."""
    raise NotImplementedError(f"{type(self).__name__} does not give encoded images.")

  def describe(self, index: int) -> str:
    """Example ``index`` for messages: its file and what is wrong with it, where it has one."""
    return f"example {index} of {self.name}"

  def shard_indices(self, process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """This process's contiguous block of example indices (disjoint across processes)."""
    _check_process(process_index, process_count)
    return np.array_split(np.arange(self.num_examples, dtype=np.int64), process_count)[
      process_index
    ]

  def dataset(self, process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
    """One pass over this process's shard in storage order, as decoded example dicts."""
    import tensorflow as tf

    indices = self.shard_indices(process_index, process_count)
    return tf.data.Dataset.from_tensor_slices(indices).map(
      self.read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def _check_process(process_index: int, process_count: int) -> None:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"Bad process_index={process_index} for process_count={process_count}.")


# --------------------------------------------------------------------------------------------
# In-memory arrays.


class ArraySource(DataSource):
  """Images held in memory as one uint8 [N, H, W, 3] array."""

  def __init__(
    self,
    images: np.ndarray,
    labels: np.ndarray | None,
    num_classes: int | None = None,
    name: str = "arrays",
  ):
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise UserError(
        f"Image arrays must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}: "
        "convert them before building the source."
      )
    if len(images) == 0:
      raise UserError("The image array is empty: pass at least one image.")
    if labels is None:
      labels = np.full([len(images)], -1, np.int32)
    labels = np.asarray(labels).astype(np.int32)
    if labels.shape != (len(images),):
      raise UserError(f"Got {labels.shape[0]} labels for {len(images)} images: pass one per image.")
    if num_classes is None:
      num_classes = int(labels.max()) + 1 if labels.min() >= 0 else 0
    self.name = name
    self.images = images
    self.labels = labels
    self.num_examples = len(images)
    self.num_classes = num_classes
    self._images_t: tf.Tensor | None = None
    self._labels_t: tf.Tensor | None = None

  def read(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
    import tensorflow as tf

    if self._images_t is None:
      with tf.init_scope():
        self._images_t = tf.constant(self.images)
        self._labels_t = tf.constant(self.labels)
    return {"image": tf.gather(self._images_t, index), "label": tf.gather(self._labels_t, index)}


def array_source(
  images: np.ndarray,
  labels: np.ndarray | None = None,
  *,
  num_classes: int | None = None,
  holdout: int = 0,
  holdout_seed: int = 0,
  subset: str = "train",
) -> ArraySource:
  """A source over in-memory uint8 [N, H, W, 3] images; ``labels`` None means unlabelled.

  ``holdout``/``holdout_seed``/``subset`` select a stratified hold-out part, as in
  :func:`folder_source`.
  """
  images = np.asarray(images)
  label_array = None if labels is None else np.asarray(labels).astype(np.int32)
  if holdout:
    split_labels = label_array if label_array is not None else np.full([len(images)], -1)
    keep = _select_subset(split_labels, holdout, holdout_seed, subset)
    images = images[keep]
    label_array = None if label_array is None else label_array[keep]
    if num_classes is None and labels is not None:
      num_classes = int(np.max(labels)) + 1
  return ArraySource(images, label_array, num_classes=num_classes)


class SubsetSource(DataSource):
  """The examples ``indices`` of a random-access source, in that order."""

  def __init__(self, base: DataSource, indices: np.ndarray, name: str | None = None):
    if not base.random_access:
      raise TypeError(f"{base.name} is not random access; it cannot be subset by index.")
    self.base = base
    self.indices = np.asarray(indices, np.int64)
    self.name = name or f"{base.name}[{len(self.indices)} examples]"
    self.num_examples = len(self.indices)
    self.num_classes = base.num_classes
    base_labels = getattr(base, "labels", None)
    self.labels = None if base_labels is None else np.asarray(base_labels)[self.indices]
    self._indices_t: tf.Tensor | None = None
    self.encoded_reads = base.encoded_reads

  def _base_index(self, index: tf.Tensor) -> tf.Tensor:
    import tensorflow as tf

    if self._indices_t is None:
      with tf.init_scope():
        self._indices_t = tf.constant(self.indices)
    return tf.gather(self._indices_t, index)

  def read(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
    return self.base.read(self._base_index(index))

  def describe(self, index: int) -> str:
    return self.base.describe(int(self.indices[index]))

  def read_encoded(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
    return self.base.read_encoded(self._base_index(index))


def subset_source(source: DataSource, indices: np.ndarray) -> SubsetSource:
  """A random-access source restricted to ``indices`` (e.g. a label subset or a validation split)."""
  return SubsetSource(source, indices)


# --------------------------------------------------------------------------------------------
# Hold-out splits.


def stratified_holdout(
  labels: np.ndarray, holdout: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Splits example indices into (train, holdout), ``holdout`` of them stratified by label.

  Each class gives a share proportional to its size (largest remainders fill the rounding gap).
  Deterministic in ``seed``; both index arrays are sorted.
  """
  labels = np.asarray(labels)
  n = len(labels)
  if holdout <= 0:
    return np.arange(n, dtype=np.int64), np.zeros([0], np.int64)
  if holdout >= n:
    raise UserError(f"holdout={holdout} must be smaller than the number of examples ({n}).")
  classes, counts = np.unique(labels, return_counts=True)
  quota = holdout * counts / n
  take = np.floor(quota).astype(np.int64)
  missing = holdout - int(take.sum())
  # Stable sort: ties go to the smaller class id, so the split is reproducible.
  for c in np.argsort(-(quota - take), kind="stable")[:missing]:
    take[c] += 1
  rng = np.random.default_rng(seed)
  held = []
  for c, k in zip(classes, take):
    members = np.flatnonzero(labels == c)
    held.append(rng.permutation(members)[:k])
  held_idx = np.sort(np.concatenate(held)).astype(np.int64)
  mask = np.ones(n, bool)
  mask[held_idx] = False
  return np.flatnonzero(mask).astype(np.int64), held_idx


def _select_subset(labels: np.ndarray, holdout: int, seed: int, subset: str) -> np.ndarray:
  if subset not in ("train", "holdout"):
    raise UserError(f"subset={subset!r} must be 'train' or 'holdout'.")
  if subset == "holdout" and holdout <= 0:
    raise UserError("subset='holdout' needs holdout > 0 (the number of held-out examples).")
  train_idx, held_idx = stratified_holdout(labels, holdout, seed)
  return train_idx if subset == "train" else held_idx


# --------------------------------------------------------------------------------------------
# Synthetic shapes.


def _shape_mask(kind: int, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
  """Boolean mask of shape ``kind`` of radius ``r``; (dy, dx) are offsets from its centre."""
  ady, adx = np.abs(dy), np.abs(dx)
  box = np.maximum(ady, adx) <= r
  dist = np.sqrt(dy**2 + dx**2)
  band = max(r / 2.5, 1.0)
  if kind == 0:
    return dist <= r
  if kind == 1:
    return np.maximum(ady, adx) <= 0.85 * r
  if kind == 2:
    return (dy <= 0.7 * r) & (adx <= (dy + r) * 0.6)
  if kind == 3:
    return ((adx <= 0.3 * r) & (ady <= r)) | ((ady <= 0.3 * r) & (adx <= r))
  if kind == 4:
    return (dist <= r) & (dist >= 0.55 * r)
  if kind == 5:
    return box & (np.floor((dy + r) / band) % 2 == 0)
  if kind == 6:
    return box & (np.floor((dx + r) / band) % 2 == 0)
  if kind == 7:
    return adx + ady <= r
  if kind == 8:
    return box & ((np.abs(dx - dy) <= 0.3 * r) | (np.abs(dx + dy) <= 0.3 * r))
  if kind == 9:
    cell = max(r / 2, 1.0)
    return box & ((np.floor((dx + r) / cell) + np.floor((dy + r) / cell)) % 2 == 0)
  raise ValueError(f"No shape {kind}.")


def _draw_image(rng: np.random.Generator, kind: int, size: int) -> np.ndarray:
  """One synthetic image: a shape of class ``kind`` on a textured background."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  fg = rng.uniform(0, 1, 3)
  bg = rng.uniform(0, 1, 3)
  while np.linalg.norm(fg - bg) < 0.5:
    bg = rng.uniform(0, 1, 3)
  # Background: a linear gradient around bg in a random direction.
  angle = rng.uniform(0, 2 * np.pi)
  ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / size - 0.5
  tint = rng.uniform(-0.2, 0.2, 3)
  image = np.clip(bg + ramp[..., None] * tint, 0, 1)
  # A few small distractor dots of random colours.
  for _ in range(rng.integers(0, 4)):
    cy, cx = rng.uniform(0, size, 2)
    dot = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(0.5, 1.5) * max(size / 32, 1) ** 2
    image[dot] = rng.uniform(0, 1, 3)
  r = rng.uniform(0.2, 0.4) * size
  cy, cx = rng.uniform(r * 0.8, size - r * 0.8, 2)
  mask = _shape_mask(kind, yy - cy, xx - cx, r)
  image[mask] = fg
  image = image + rng.normal(0, 0.04, image.shape)
  return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def synthetic_images(
  num_examples: int, num_classes: int, image_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Procedural uint8 images [N, S, S, 3] and int32 labels, deterministic in ``seed``.

  Class c is the shape ``SHAPE_NAMES[c]`` (disc, square, triangle, ...) drawn with a random
  colour, position and size over a random gradient background with distractor dots and pixel
  noise, so that the class is visible in the shape but not in any fixed pixel or colour.
  """
  if not 1 <= num_classes <= len(SHAPE_NAMES):
    raise UserError(
      f"synthetic_classes={num_classes} must lie in [1, {len(SHAPE_NAMES)}] (one class per shape)."
    )
  if num_examples < 1:
    raise UserError(f"synthetic_examples={num_examples} must be positive.")
  if image_size < 8:
    raise UserError(f"The synthetic image size {image_size} must be at least 8 pixels.")
  rng = np.random.default_rng(seed)
  # Balanced classes in a shuffled order.
  labels = rng.permutation(np.arange(num_examples) % num_classes).astype(np.int32)
  images = np.stack([_draw_image(rng, int(c), image_size) for c in labels])
  return images, labels


def synthetic_source(
  num_examples: int, num_classes: int, image_size: int, seed: int
) -> ArraySource:
  """A small synthetic labelled dataset of procedural shapes (see :func:`synthetic_images`)."""
  images, labels = synthetic_images(num_examples, num_classes, image_size, seed)
  source = ArraySource(images, labels, num_classes=num_classes, name="synthetic")
  return source


# --------------------------------------------------------------------------------------------
# Image folders.


def _check_file(path: str, full: bool) -> bool:
  """Whether ``path`` looks like a decodable JPEG or PNG (full=True decodes it with PIL)."""
  try:
    with open(path, "rb") as f:
      head = f.read(8)
    if not (head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG\r\n\x1a\n")):
      return False
    if full:
      from PIL import Image

      with Image.open(path) as im:
        im.load()
    return True
  except Exception:
    return False


def _list_images(folder: str) -> list[str]:
  found = []
  for root, dirs, files in os.walk(folder, followlinks=True):
    dirs.sort()
    found.extend(
      os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)
    )
  return found


class FileSource(DataSource):
  """Images read and decoded from files; decoding handles JPEG and PNG of any size."""

  encoded_reads = True

  def __init__(
    self,
    paths: Sequence[str],
    labels: np.ndarray,
    num_classes: int,
    class_names: Sequence[str] = (),
    name: str = "folder",
  ):
    self.name = name
    self.paths = list(paths)
    self.labels = np.asarray(labels, np.int32)
    self.num_examples = len(self.paths)
    self.num_classes = num_classes
    self.class_names = list(class_names)
    self._paths_t: tf.Tensor | None = None
    self._labels_t: tf.Tensor | None = None

  def read_encoded(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
    import tensorflow as tf

    if self._paths_t is None:
      with tf.init_scope():
        self._paths_t = tf.constant(self.paths)
        self._labels_t = tf.constant(self.labels)
    data = tf.io.read_file(tf.gather(self._paths_t, index))
    return {"image": data, "label": tf.gather(self._labels_t, index)}

  def describe(self, index: int) -> str:
    path = self.paths[index]
    if not os.path.exists(path):
      return f"{path} (missing)"
    if not os.access(path, os.R_OK):
      return f"{path} (not readable)"
    return f"{path} (does not decode)"

  def read(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
    import tensorflow as tf

    example = self.read_encoded(index)
    image = tf.io.decode_image(
      example["image"], channels=3, dtype=tf.uint8, expand_animations=False
    )
    image = tf.ensure_shape(image, [None, None, 3])
    return {"image": image, "label": example["label"]}


def folder_source(
  path: str,
  *,
  holdout: int = 0,
  holdout_seed: int = 0,
  subset: str = "train",
  full_check: bool | None = None,
) -> FileSource:
  """Images from ``<path>/<class>/**/*.jpg|jpeg|png`` or from a flat folder of images.

  Class folders (sorted names give labels 0..C-1) win over images lying directly in ``path``;
  a flat folder gives unlabelled examples (label -1).

  Args:
    path: the root folder.
    holdout: number of examples held out, stratified by class (0: none).
    holdout_seed: seed of the hold-out choice; the split depends only on the file list.
    subset: "train" (everything but the hold-out) or "holdout".
    full_check: decode every file with PIL at start-up to find corrupt ones; None decides by size
      (full up to 100,000 files, else only a header check; the pipeline replaces examples whose
      files fail to decode later, see ``pipeline``).
  """
  if not path or not os.path.isdir(path):
    raise UserError(f"Image folder {path!r} does not exist: pass an existing --config.data.path.")
  subdirs = sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=True))
  class_files = [(name, _list_images(os.path.join(path, name))) for name in subdirs]
  class_files = [(name, files) for name, files in class_files if files]
  if class_files:
    class_names = [name for name, _ in class_files]
    paths = [f for _, files in class_files for f in files]
    labels = np.concatenate(
      [np.full(len(files), c, np.int32) for c, (_, files) in enumerate(class_files)]
    )
    num_classes = len(class_names)
  else:
    class_names = []
    paths = sorted(
      e.path for e in os.scandir(path) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
    )
    labels = np.full(len(paths), -1, np.int32)
    num_classes = 0
  if not paths:
    raise UserError(
      f"No .jpg/.jpeg/.png images in {path!r}: use <path>/<class>/*.jpg or a flat image folder."
    )
  keep = _select_subset(labels, holdout, holdout_seed, subset)
  paths = [paths[i] for i in keep]
  labels = labels[keep]

  if full_check is None:
    full_check = len(paths) <= FULL_CHECK_MAX_FILES
  # PIL decoding releases the GIL, so threads over chunks of files use all cores.
  chunks = [paths[i : i + 512] for i in range(0, len(paths), 512)]
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
    results = pool.map(lambda chunk: [_check_file(p, full_check) for p in chunk], chunks)
    ok = np.array([good for chunk in results for good in chunk], bool)
  bad = int((~ok).sum())
  if bad:
    first = next(p for p, good in zip(paths, ok) if not good)
    warnings.warn(
      f"Skipping {bad} unreadable or corrupt image file(s) of {len(paths)} in {path!r} "
      f"(first: {first}).",
      stacklevel=2,
    )
  paths = [p for p, good in zip(paths, ok) if good]
  labels = labels[ok]
  if not paths:
    raise UserError(f"None of the images in {path!r} can be decoded: check the files.")
  return FileSource(paths, labels, num_classes, class_names, name=f"folder:{path}")


# --------------------------------------------------------------------------------------------
# TFDS.


class TfdsSource(DataSource):
  """A TFDS split, read sequentially (images stay encoded until after shuffling)."""

  random_access = False

  def __init__(self, builder, split: str, num_examples: int):
    self.builder = builder
    self.split = split
    self.name = f"tfds:{builder.name}/{split}"
    self.num_examples = num_examples
    features = builder.info.features
    # STL-10's "unlabelled" split stores label -1 under a 10-class feature.
    self._has_label = "label" in features and not split.startswith("unlabelled")
    self.num_classes = int(features["label"].num_classes) if self._has_label else 0

  def _subsplit(self, process_index: int, process_count: int) -> str:
    _check_process(process_index, process_count)
    if process_count == 1:
      return self.split
    import tensorflow_datasets as tfds

    return tfds.even_splits(self.split, n=process_count)[process_index]

  def shard_size(self, process_index: int = 0, process_count: int = 1) -> int:
    """Number of examples in this process's shard."""
    ds = self._as_dataset(self._subsplit(process_index, process_count))
    n = int(ds.cardinality())
    if n < 0:
      n = len(np.array_split(np.arange(self.num_examples), process_count)[process_index])
    return n

  def shard_indices(self, process_index: int = 0, process_count: int = 1) -> np.ndarray:
    raise NotImplementedError("TFDS sources are not random access.")

  def _as_dataset(self, split: str) -> tf.data.Dataset:
    import tensorflow_datasets as tfds

    return self.builder.as_dataset(
      split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )

  def records(self, process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
    """This process's shard as {"image": encoded bytes, "label": int32}, in storage order."""
    import tensorflow as tf

    ds = self._as_dataset(self._subsplit(process_index, process_count))
    has_label = self._has_label

    def select(ex):
      label = tf.cast(ex["label"], tf.int32) if has_label else tf.constant(-1, tf.int32)
      return {"image": ex["image"], "label": label}

    return ds.map(select, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  @staticmethod
  def decode(record: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Decodes a record of :meth:`records` into a uint8 [H, W, 3] image."""
    import tensorflow as tf

    image = tf.io.decode_image(record["image"], channels=3, dtype=tf.uint8, expand_animations=False)
    return {"image": tf.ensure_shape(image, [None, None, 3]), "label": record["label"]}

  def dataset(self, process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
    import tensorflow as tf

    return self.records(process_index, process_count).map(
      self.decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def tfds_source(
  name: str, split: str = "train", data_dir: str | None = None, download: bool = False
) -> TfdsSource:
  """A TFDS dataset split, e.g. ("imagenet2012", "train"), ("stl10", "unlabelled").

  Nothing is downloaded unless ``download`` is True: an unprepared dataset is a UserError that
  says how to prepare it, so a machine without network never hangs here.
  """
  import tensorflow_datasets as tfds

  data_dir = data_dir or None
  where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets)"
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(
      f"Unknown TFDS dataset {name!r}: check --config.data.name (e.g. imagenet2012, cifar10, stl10)."
    ) from None
  if download:
    builder.download_and_prepare()
  try:
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
  except AssertionError:
    manual = " --manual_dir=<folder with the ImageNet tars>" if "imagenet" in name else ""
    raise UserError(
      f"TFDS dataset {name!r} is not prepared in {where}: prepare it with `tfds build {name}"
      f"{' --data_dir=' + data_dir if data_dir else ''}{manual}` or point --config.data.data_dir "
      "at a folder where it is prepared."
    ) from None
  except (ValueError, KeyError) as e:
    splits = sorted(builder.info.splits) or ["(unknown)"]
    raise UserError(
      f"TFDS dataset {name!r} has no split {split!r} ({str(e).splitlines()[0][:80]}): "
      f"use one of {splits}."
    ) from None
  n = int(ds.cardinality())
  if n < 0:
    n = builder.info.splits[split].num_examples
  if n <= 0:
    raise UserError(f"TFDS split {name}/{split} in {where} is empty: pick another split.")
  return TfdsSource(builder, split, n)


# --------------------------------------------------------------------------------------------
# Dispatch.


def make_source(
  kind: str,
  *,
  name: str = "",
  data_dir: str = "",
  path: str = "",
  split: str = "train",
  synthetic_examples: int = 2048,
  synthetic_classes: int = 10,
  image_size: int = 32,
  seed: int = 0,
  holdout: int = 0,
  holdout_seed: int = 0,
  subset: str = "train",
  download: bool = False,
) -> DataSource:
  """Builds a source of ``kind`` "synthetic", "tfds" or "folder".

  For "synthetic", ``split`` "train" uses ``seed`` and any other split a seed derived from the
  split name, so a "test" split holds different images. For "folder", ``holdout``,
  ``holdout_seed`` and ``subset`` select a stratified hold-out part (``split`` is not used).
  """
  if kind == "synthetic":
    split_seed = seed if split == "train" else seed + zlib.crc32(split.encode()) + 1
    return synthetic_source(synthetic_examples, synthetic_classes, image_size, split_seed)
  if kind == "tfds":
    if not name:
      raise UserError("The TFDS source needs a dataset name: pass --config.data.name=<TFDS name>.")
    return tfds_source(name, split, data_dir or None, download=download)
  if kind == "folder":
    return folder_source(path, holdout=holdout, holdout_seed=holdout_seed, subset=subset)
  raise UserError(f"Unknown data source {kind!r}: use 'synthetic', 'tfds' or 'folder'.")
