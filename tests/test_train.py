"""End-to-end pretraining runs on tiny shapes: checkpoints, exact resume, divergence, configs."""

import errno
import functools
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tiny import final_state, load_config_module, read_metrics, tiny_config

from byol_jax import checkpointing, train
from byol_jax.errors import UserError


@functools.cache
def uninterrupted(tmp_root, conv_impl="auto"):
  workdir = os.path.join(tmp_root, "full" if conv_impl == "auto" else f"full_{conv_impl}")
  train.pretrain(tiny_config(**{"model.conv_impl": conv_impl}), workdir)
  return workdir


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("train"))


def test_pretraining_writes_checkpoints_metrics_and_tensorboard(tmp_root):
  workdir = uninterrupted(tmp_root)
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
  for r in records:
    assert {"loss", "lr", "tau", "grad_norm", "projection_std", "images_per_s"} <= set(r)
    assert np.isfinite(r["loss"])
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-2:] == ["3", "6"]
  assert any(
    f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tensorboard"))
  )
  saved = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")).restore_config()
  assert saved["model"]["encoder"] == "tiny"


# XLA's convolutions (the GPU/TPU path) and the CPU default (the lowering), whose uninterrupted run
# the other tests share.
@pytest.mark.parametrize("conv_impl", ["xla", "auto"])
def test_resumed_run_continues_exactly(tmp_root, conv_impl):
  config = tiny_config(**{"model.conv_impl": conv_impl})
  full = uninterrupted(tmp_root, conv_impl)
  # A run killed right after its step-3 checkpoint: the same workdir without what came later.
  workdir = os.path.join(tmp_root, f"resumed_{conv_impl}")
  shutil.copytree(full, workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  shutil.rmtree(os.path.join(workdir, "tensorboard"))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    head = f.readlines()[:3]
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    # The kill also cut the step-4 record short in the middle of its write.
    f.writelines([*head, '{"step": 4, "loss": 0.'])
  train.pretrain(config, workdir)
  a, b = read_metrics(full), read_metrics(workdir)
  assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-6)
  sa, sb = final_state(full, config), final_state(workdir, config)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), sa, sb)


def test_resuming_with_another_architecture_is_refused(tmp_root):
  full = uninterrupted(tmp_root)
  with pytest.raises(UserError, match="another architecture"):
    train.pretrain(tiny_config(**{"model.projector_output": 8}), full)


def test_batch_size_must_split_over_devices(tmp_path):
  with pytest.raises(UserError, match="not divisible by the 8 devices"):
    train.pretrain(tiny_config(batch_size=12), str(tmp_path))


def test_byol_r50_config_runs_on_mocked_imagenet(tmp_path):
  byol_r50 = load_config_module("byol_r50")
  config = byol_r50.get_config()
  assert (config.optim.base_lr, config.optim.tau_base, config.batch_size) == (0.2, 0.996, 4096)
  assert byol_r50.get_config("300").optim.base_lr == 0.3
  config.data.image_size = 32
  config.data.eval_resize = 36
  config.batch_size = 8
  config.num_steps = 1
  config.log_every_steps = 1
  # The recipe is under test, not the CPU convolutions (tested apart): XLA's compile faster.
  config.model.conv_impl = "xla"
  with tfds.testing.mock_data(num_examples=16):
    metrics = train.pretrain(config, str(tmp_path))
  assert np.isfinite(metrics["loss"])


def _truncate_arrays(step_dir):
  """A write cut short: every array file of the checkpoint truncated."""
  data = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
  for name in os.listdir(data):
    with open(os.path.join(data, name), "r+b") as f:
      f.truncate(10)


def _empty(step_dir):
  shutil.rmtree(step_dir)
  os.makedirs(step_dir)


DAMAGE = {
  "truncated_arrays": _truncate_arrays,
  "missing_array_folder": lambda d: shutil.rmtree(os.path.join(d, "state", "ocdbt.process_0")),
  "empty_step_folder": _empty,
  "missing_array_metadata": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_moved_aside_and_the_run_ends_like_an_intact_one(
  tmp_root, damage, capsys
):
  full = uninterrupted(tmp_root)
  workdir = os.path.join(tmp_root, f"damaged_{damage}")
  shutil.copytree(full, workdir)
  newest = os.path.join(workdir, "checkpoints", "6")
  DAMAGE[damage](newest)
  damaged_files = sorted(
    os.path.relpath(os.path.join(d, f), newest) for d, _, fs in os.walk(newest) for f in fs
  )
  # The step-6 checkpoint must be written again (today's crash: "Checkpoint for step 6 already
  # exists", at every restart); a second start must find an intact run and leave it alone.
  train.pretrain(tiny_config(), workdir)
  out = capsys.readouterr().out
  assert "checkpoint 6 is damaged" in out
  assert "starting at step 3" in out
  assert "Done: 6 steps" in out
  moved = os.path.join(workdir, "checkpoints_damaged", "6")
  assert (
    sorted(os.path.relpath(os.path.join(d, f), moved) for d, _, fs in os.walk(moved) for f in fs)
    == damaged_files
  )
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-2:] == ["3", "6"]
  config = tiny_config()
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
    final_state(workdir, config),
    final_state(full, config),
  )
  np.testing.assert_allclose(
    [r["loss"] for r in read_metrics(workdir)], [r["loss"] for r in read_metrics(full)], rtol=1e-6
  )


def test_a_full_disk_during_a_save_is_one_error_and_the_run_resumes(tmp_root, monkeypatch):
  full = uninterrupted(tmp_root)
  workdir = os.path.join(tmp_root, "disk_full")
  save = checkpointing.ocp.CheckpointManager.save

  def save_until_full(manager, step, *args, **kwargs):
    if step == 6:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return save(manager, step, *args, **kwargs)

  with monkeypatch.context() as m:
    m.setattr(checkpointing.ocp.CheckpointManager, "save", save_until_full)
    with pytest.raises(UserError, match=r"Writing checkpoint 6 .* failed .*No space left"):
      train.pretrain(tiny_config(), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]
  train.pretrain(tiny_config(), workdir)  # space freed: the same command resumes
  config = tiny_config()
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
    final_state(workdir, config),
    final_state(full, config),
  )


def test_resume_with_a_changed_config_keeps_each_starts_config(tmp_root, capsys):
  full = uninterrupted(tmp_root)
  workdir = os.path.join(tmp_root, "longer")
  shutil.copytree(full, workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    first = f.read()
  train.pretrain(tiny_config(num_steps=7), workdir)
  assert "config changed since the last start (num_steps)" in capsys.readouterr().out
  with open(os.path.join(workdir, "config.before_step_6.json")) as f:
    assert f.read() == first
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["num_steps"] == 7


def test_encoder_only_warm_start_from_another_architecture(tmp_root):
  full = uninterrupted(tmp_root)
  other_heads = {"model.projector_output": 8, "num_steps": 1}
  workdir = os.path.join(tmp_root, "warm")
  train.pretrain(tiny_config(init_encoder_from=full, **other_heads), workdir)
  trained = final_state(full, tiny_config())
  # The first step's learning rate is 0 (warm-up), so the checkpoint after it holds exactly the
  # encoder it started from: the trained one, with new heads of the new size.
  warm = final_state(workdir, tiny_config(**other_heads))
  # Online and target encoders both start from the trained online encoder (the target's EMA of
  # two equal values is that value, up to rounding).
  close = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7)
  for part in ("online_params", "target_params"):
    for module, leaves in warm[part].items():
      if module.startswith("res_net_tiny"):
        jax.tree.map(close, leaves, trained["online_params"][module])
  assert warm["online_params"]["projector/linear_1"]["w"].shape[-1] == 8


def test_step_and_encoder_import_without_tensorflow():
  """An accelerator host that only runs the update step needs no TensorFlow, nor do the sources
  (tests/test_prepared.py trains without it); the tf.data pipeline loads it on use."""
  code = (
    "import sys\n"
    "sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None\n"
    "import byol_jax.byol, byol_jax.encoder, byol_jax.train\n"
    "import byol_jax.data as data\n"
    "assert data.PAPER_T_PRIME.solarize_prob == 0.2\n"
    "assert data.synthetic_source(4, 2, 8, 0).num_examples == 4\n"
    "try:\n"
    "  data.pretrain_batches\n"
    "except ImportError:\n"
    "  print('tf.data loads on use')\n"
  )
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == "tf.data loads on use"
