"""Prepared data files: written from folders and TFDS by ``--config.mode=prepare``, read back
without TensorFlow, and a run from one trains on exactly the folder's images and hold-out."""

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image
from processes import assert_one_line_error, run_main, run_python
from tiny import read_metrics, tiny_flags, write_folder

from byol_jax import config_base, run_data
from byol_jax.data import in_memory, pipeline, prepared, sources
from byol_jax.errors import UserError

# Imports of these fail in the runs below, as on an accelerator host that has JAX only.
_WITHOUT_TF = (
  "import runpy, sys\n"
  "for name in ('tensorflow', 'tensorflow_datasets'):\n"
  "  sys.modules[name] = None\n"
)


def _run_without_tensorflow(code: str):
  return run_python("-c", _WITHOUT_TF + code)


def test_a_prepared_folder_trains_as_the_folder_without_tensorflow(tmp_path):
  """Prepare a PNG folder on the command line, pretrain from the file with TensorFlow unimportable
  (device pipeline, hold-out, kNN monitor, checkpoints), then load the encoder the same way: the
  run's losses and kNN accuracies equal those of the run from the folder itself."""
  folder = write_folder(tmp_path / "images")
  prepare = run_main(
    f"--workdir={tmp_path / 'prepared'}",
    "--config.mode=prepare",
    "--config.data.source=folder",
    f"--config.data.path={folder}",
  )
  assert prepare.returncode == 0, prepare.stderr[-3000:]
  path = tmp_path / "prepared" / "train.npz"
  assert f"Prepared 24 images of folder:{folder}: {path}" in prepare.stdout
  file_bytes = sum(os.path.getsize(p) for p in Path(folder).glob("*/*.png"))
  assert file_bytes < os.path.getsize(path) < file_bytes + 8192  # the files' bytes, as they are

  run = {
    "data.pipeline": "device",
    "data.holdout": 6,
    "num_steps": 4,
    "log_every_steps": 2,
    "checkpoint_every_steps": 2,
    "eval.knn_every_steps": 2,
    "eval.knn_k": 5,
  }
  from_folder = run_main(
    f"--workdir={tmp_path / 'folder_run'}",
    *tiny_flags(**run, **{"data.source": "folder", "data.path": folder}),
  )
  assert from_folder.returncode == 0, from_folder.stderr[-3000:]
  flags = tiny_flags(**run, **{"data.source": "prepared", "data.path": tmp_path / "prepared"})
  argv = ["byol_jax.main", f"--workdir={tmp_path / 'prepared_run'}", *map(str, flags)]
  # Then, in the same process, the encoder loads and encodes without TensorFlow too.
  result = _run_without_tensorflow(
    f"sys.argv = {argv!r}\n"
    "try:\n"
    "  runpy.run_module('byol_jax.main', run_name='__main__')\n"
    "except SystemExit as e:\n"
    "  assert not e.code, e.code\n"
    "import numpy as np\n"
    "from byol_jax import load_encoder\n"
    f"encoder = load_encoder({str(tmp_path / 'prepared_run')!r})\n"
    "features = encoder(np.zeros((3, 16, 16, 3), np.uint8))\n"
    "print('features', features.shape, bool(np.isfinite(features).all()))\n"
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert "TensorBoard logs off: TensorFlow is not installed" in result.stdout
  assert "Done: 4 steps." in result.stdout
  assert "features (3, 64) True" in result.stdout

  folder_run, prepared_run = (_by_step(tmp_path / w) for w in ("folder_run", "prepared_run"))
  assert sorted(prepared_run) == [2, 4]
  for step in (2, 4):
    for key in ("loss", "knn_top1", "projection_std"):
      want = folder_run[step][key]
      np.testing.assert_allclose(prepared_run[step][key], want, rtol=1e-5, err_msg=key)


def _by_step(workdir):
  merged = {}
  for record in read_metrics(workdir):
    merged.setdefault(record["step"], {}).update(record)
  return merged


def test_the_file_holds_the_folders_images_labels_and_hold_out(tmp_path):
  """JPEG and PNG files round-trip (PNG to the pixels TensorFlow decodes, JPEG to PIL's), with
  labels, class names and the folder's stratified hold-out."""
  folder = write_folder(tmp_path / "images", ext="png", per_class=5)
  write_folder(tmp_path / "images", ext="jpg", per_class=5, classes=2)
  source = sources.folder_source(folder)
  out = tmp_path / "prepared"
  os.makedirs(out)
  prepared.prepare(source, str(out / "train.npz"))
  loaded = prepared.load(str(out), "train")
  assert loaded.num_examples == source.num_examples == 25
  assert loaded.num_classes == 3
  np.testing.assert_array_equal(loaded.labels, source.labels)
  for i, path in enumerate(source.paths):
    with Image.open(path) as im:
      np.testing.assert_array_equal(loaded.images[i], np.asarray(im.convert("RGB")))
    if path.endswith(".png"):
      decoded = tf.io.decode_image(tf.io.read_file(path), channels=3).numpy()
      np.testing.assert_array_equal(loaded.images[i], decoded)
  with np.load(out / "train.npz") as f:
    assert list(f["class_names"]) == ["class_0", "class_1", "class_2"]
  for subset in ("train", "holdout"):
    want = sources.folder_source(folder, holdout=7, holdout_seed=3, subset=subset)
    got = prepared.load(str(out), "train", holdout=7, holdout_seed=3, subset=subset)
    np.testing.assert_array_equal(got.labels, want.labels)
    index = [source.paths.index(p) for p in want.paths]
    np.testing.assert_array_equal(got.images, loaded.images[index])


def test_tfds_splits_are_prepared_with_their_labels(tmp_path):
  config = config_base.get_base_config()
  config.data.source = "tfds"
  config.data.name = "cifar10"
  with tfds.testing.mock_data(num_examples=12):
    written = run_data.prepare(config, str(tmp_path))
    want = {
      split: list(run_data.make_source(config, split).dataset().as_numpy_iterator())
      for split in ("train", "test")
    }
    names = run_data.make_source(config, "train").builder.info.features["label"].names
  assert written == [str(tmp_path / "train.npz"), str(tmp_path / "test.npz")]
  for split, examples in want.items():
    loaded = prepared.load(str(tmp_path), split)
    np.testing.assert_array_equal(loaded.images, np.stack([e["image"] for e in examples]))
    np.testing.assert_array_equal(loaded.labels, [e["label"] for e in examples])
    assert loaded.num_classes == 10
  with np.load(tmp_path / "train.npz") as f:
    assert list(f["class_names"]) == names
  assert len(names) == 10


@pytest.mark.parametrize("shape", [(16, 16), (20, 24), (40, 30)])
def test_in_memory_evaluation_views_match_tf_data(shape):
  """Same shards, padding, labels and indices as ``pipeline.eval_batches`` over 2 processes, and
  the same pixels up to float rounding (3e-7 when only cropping, 1e-3 where it resizes)."""
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (11, *shape, 3), dtype=np.uint8)
  labels = rng.integers(0, 4, 11)
  source = sources.ArraySource(images, labels)
  sizes = dict(batch_size=6, image_size=16, resize_size=18 if shape != (16, 16) else 16)
  for process in range(2):
    kwargs = dict(sizes, process_index=process, process_count=2)
    want = list(pipeline.eval_batches(source, **kwargs))
    got = list(in_memory.eval_batches(in_memory.arrays_of(source), **kwargs))
    assert len(got) == len(want) == 2
    for g, w in zip(got, want):
      for key in ("label", "mask", "index"):
        np.testing.assert_array_equal(g[key], w[key], err_msg=key)
      tolerance = 3e-7 if shape == (16, 16) else 1e-3
      np.testing.assert_allclose(g["image"], w["image"], atol=tolerance)


def test_bad_prepared_data_is_one_clear_line(tmp_path):
  folder = write_folder(tmp_path / "images", per_class=2)
  config = config_base.get_base_config()
  config.data.source, config.data.path = "folder", folder
  run_data.prepare(config, str(tmp_path / "out"))
  with pytest.raises(UserError, match="exists already: move it away"):
    run_data.prepare(config, str(tmp_path / "out"))
  # The refused second prepare left the first file as it was.
  assert prepared.load(str(tmp_path / "out"), "train").num_examples == 6
  with pytest.raises(UserError, match=r"No prepared file .*mode=prepare"):
    prepared.load(str(tmp_path / "out"), "test")
  damaged = tmp_path / "damaged"
  os.makedirs(damaged)
  with open(tmp_path / "out" / "train.npz", "rb") as f:
    (damaged / "train.npz").write_bytes(f.read()[:500])
  with pytest.raises(UserError, match="not a prepared data file"):
    prepared.load(str(damaged), "train")
  write_folder(tmp_path / "mixed", size=(16, 16), per_class=1)
  write_folder(tmp_path / "mixed", size=(12, 16), per_class=1, classes=1, ext="jpg")
  with pytest.raises(UserError, match=r"several sizes .*pipeline=tfdata"):
    prepared.prepare(sources.folder_source(str(tmp_path / "mixed")), str(tmp_path / "m.npz"))
  assert not os.path.exists(tmp_path / "m.npz")
  result = run_main(
    f"--workdir={tmp_path / 'run'}", *tiny_flags(**{"data.source": "prepared", "data.path": ""})
  )
  assert_one_line_error(result, "data.path", "prepared files")
