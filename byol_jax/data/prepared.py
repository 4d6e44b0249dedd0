"""A dataset split prepared once into one compact file, read back without TensorFlow.

``<dir>/<split>.npz`` holds the split's images as encoded bytes -- an image folder's JPEG and PNG
files byte for byte, TFDS records as TFDS stores them, in-memory arrays as PNG -- with their
labels and class names (CIFAR-10's 50,000 training JPEGs: a 44 MiB file). Reading it decodes the
images with PIL, threads over all cores, into an in-memory source
(``data.source="prepared"``, ``data.path=<dir>``); with ``data.pipeline="device"`` a run then
trains, monitors and evaluates without TensorFlow installed, e.g. on an accelerator host that has
JAX only. Write one with ``--config.mode=prepare`` (``byol_jax.run_data.prepare``).

The examples keep the source's order, so a folder's stratified hold-out (``data.holdout``) picks
the same images from its prepared file. PNG decodes to the same pixels either way; JPEG does not
quite: PIL uses libjpeg's accurate integer DCT, TensorFlow by default its fast one (on CIFAR-10's
files 1 level of 255 apart on average, at most 5), so a run from a prepared folder of JPEGs sees
marginally other pixels than a run from the folder itself.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import zipfile
from collections.abc import Iterator, Sequence

import numpy as np

from byol_jax.data import in_memory, sources
from byol_jax.errors import UserError

FORMAT_VERSION = 1
SUFFIX = ".npz"
_DECODE_CHUNK = 512


def split_path(directory: str, split: str) -> str:
  """The prepared file of ``split`` in ``directory``."""
  return os.path.join(directory, split + SUFFIX)


def pack(encoded: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
  """(data, offsets): the encoded images back to back as uint8, image i at
  ``data[offsets[i]:offsets[i + 1]]``."""
  lengths = np.array([len(b) for b in encoded], np.int64)
  offsets = np.concatenate([np.zeros([1], np.int64), np.cumsum(lengths)])
  return np.frombuffer(b"".join(encoded), np.uint8), offsets


def write(
  path: str,
  data: np.ndarray,
  offsets: np.ndarray,
  labels: np.ndarray,
  class_names: Sequence[str] = (),
  name: str = "",
) -> None:
  """Writes packed images (:func:`pack`), labels and class names to ``path`` (atomically: a
  crash leaves no partial file under that name)."""
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    np.savez(
      f,
      format_version=np.int64(FORMAT_VERSION),
      data=data,
      offsets=offsets,
      labels=np.asarray(labels, np.int32),
      class_names=np.array(list(class_names), dtype=np.str_),
      name=np.array(name),
    )
  os.replace(tmp, path)


def _decode_one(blob: bytes, index: int, path: str) -> np.ndarray:
  from PIL import Image

  try:
    with Image.open(io.BytesIO(blob)) as im:
      return np.asarray(im.convert("RGB"))
  except Exception as e:  # PIL raises many types for bad data
    raise UserError(
      f"Example {index} of {path} does not decode ({type(e).__name__}): prepare the file again "
      "with --config.mode=prepare."
    ) from None


def decode_all(data: np.ndarray, offsets: np.ndarray, path: str) -> np.ndarray:
  """uint8 [N, H, W, 3]: every image of a prepared file, decoded with PIL in threads.

  UserError when the images differ in size or would take more than half the available memory.
  """
  n = len(offsets) - 1
  first = _decode_one(data[offsets[0] : offsets[1]].tobytes(), 0, path)
  in_memory.check_fits(
    n, first.shape, path, int(in_memory.MEMORY_FRACTION * in_memory.available_memory_bytes())
  )
  images = np.empty((n, *first.shape), np.uint8)

  def fill(start: int) -> None:
    for i in range(start, min(start + _DECODE_CHUNK, n)):
      image = _decode_one(data[offsets[i] : offsets[i + 1]].tobytes(), i, path)
      if image.shape != first.shape:
        raise UserError(
          f"{path} holds images of several sizes ({'x'.join(map(str, first.shape[:2]))} and "
          f"{'x'.join(map(str, image.shape[:2]))}, example {i}); prepared data needs one size: "
          "resize the images to one size first, or train from the folder with "
          "--config.data.pipeline=tfdata."
        )
      images[i] = image

  # PIL releases the GIL while it decodes, so threads use every core.
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    list(pool.map(fill, range(0, n, _DECODE_CHUNK)))
  return images


def load(
  directory: str,
  split: str,
  *,
  holdout: int = 0,
  holdout_seed: int = 0,
  subset: str = "train",
) -> sources.ArraySource:
  """The prepared ``split`` of ``directory`` as an in-memory source (no TensorFlow).

  ``holdout``/``holdout_seed``/``subset`` select a stratified hold-out part, as for folders.
  """
  path = split_path(directory, split)
  if not os.path.isfile(path):
    raise UserError(
      f"No prepared file {path}: write it with --config.mode=prepare (see README, "
      "'Training without TensorFlow'), or check --config.data.path and the split."
    )
  try:
    with np.load(path, allow_pickle=False) as f:
      if int(f["format_version"]) != FORMAT_VERSION:
        raise UserError(
          f"{path} has format {int(f['format_version'])}, this version reads {FORMAT_VERSION}: "
          "prepare it again with --config.mode=prepare."
        )
      data, offsets, labels = f["data"], f["offsets"], f["labels"]
      class_names = [str(c) for c in f["class_names"]]
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(
      f"{path} is not a prepared data file ({type(e).__name__}): prepare it again with "
      "--config.mode=prepare."
    ) from None
  if len(offsets) != len(labels) + 1 or not len(labels):
    raise UserError(f"{path} is damaged or empty: prepare it again with --config.mode=prepare.")
  num_classes = len(class_names) or (int(labels.max()) + 1 if labels.min() >= 0 else 0)
  source = sources.array_source(
    decode_all(data, offsets, path),
    labels if num_classes else None,
    num_classes=num_classes,
    holdout=holdout,
    holdout_seed=holdout_seed,
    subset=subset,
  )
  source.name = f"prepared:{path}" + (f"[{subset}]" if holdout else "")
  return source


def encoded_examples(source: sources.DataSource) -> Iterator[tuple[bytes, int]]:
  """(encoded image, label) of every example of ``source``, in storage order."""
  if isinstance(source, sources.FileSource):
    for path, label in zip(source.paths, source.labels):
      with open(path, "rb") as f:
        yield f.read(), int(label)
  elif isinstance(source, sources.TfdsSource):
    for record in source.records().as_numpy_iterator():
      yield bytes(record["image"]), int(record["label"])
  else:
    from PIL import Image

    for example in source.dataset().as_numpy_iterator():
      out = io.BytesIO()
      Image.fromarray(example["image"]).save(out, format="PNG")
      yield out.getvalue(), int(example["label"])


def _class_names(source: sources.DataSource) -> list[str]:
  if isinstance(source, sources.TfdsSource) and source.has_labels:
    return list(source.builder.info.features["label"].names)
  return list(getattr(source, "class_names", None) or map(str, range(source.num_classes)))


def prepare(source: sources.DataSource, path: str) -> int:
  """Writes every example of ``source`` to the prepared file ``path``; returns its size in
  bytes. Each image is decoded once with PIL first, so a file that cannot be read back is
  refused here, naming the example."""
  encoded, labels = [], []
  for blob, label in encoded_examples(source):
    encoded.append(blob)
    labels.append(label)
  if not encoded:
    raise UserError(f"{source.name} holds no images: nothing to prepare.")
  data, offsets = pack(encoded)
  decode_all(data, offsets, source.name)
  write(path, data, offsets, np.array(labels, np.int32), _class_names(source), source.name)
  return os.path.getsize(path)
