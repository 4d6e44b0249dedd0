"""End-to-end pretraining runs on tiny shapes: checkpoints, exact resume, divergence, configs."""

import functools
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tiny import load_config_module, read_metrics, tiny_config

from byol_jax import checkpointing, train
from byol_jax.errors import UserError


def final_state(workdir, config, step=None):
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  optimizer = train.byol.make_optimizer(train.hparams(config, train.plan_run(config, 64)))
  state = ckpt.restore(train.initial_state(config, optimizer)._asdict(), step)
  ckpt.close()
  return state


@functools.cache
def uninterrupted(tmp_root):
  workdir = os.path.join(tmp_root, "full")
  train.pretrain(tiny_config(), workdir)
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


def test_resumed_run_continues_exactly(tmp_root):
  full = uninterrupted(tmp_root)
  # A run killed right after its step-3 checkpoint: the same workdir without what came later.
  workdir = os.path.join(tmp_root, "resumed")
  shutil.copytree(full, workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  shutil.rmtree(os.path.join(workdir, "tensorboard"))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    head = f.readlines()[:3]
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(head)
  train.pretrain(tiny_config(), workdir)
  a, b = read_metrics(full), read_metrics(workdir)
  assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-6)
  config = tiny_config()
  sa, sb = final_state(full, config), final_state(workdir, config)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), sa, sb)


def test_resuming_with_another_architecture_is_refused(tmp_root):
  full = uninterrupted(tmp_root)
  with pytest.raises(UserError, match="another architecture"):
    train.pretrain(tiny_config(**{"model.projector_output": 8}), full)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  config = tiny_config(
    **{"optim.base_lr": 1e38, "optim.warmup_steps": 0, "checkpoint_every_steps": 1}
  )
  with pytest.raises(UserError, match="last good checkpoint is kept"):
    train.pretrain(config, workdir)
  # Whatever was saved before the divergence is intact and finite.
  for step in checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps():
    state = final_state(workdir, config, step)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))


def test_non_finite_updates_are_dropped_up_to_a_limit(tmp_path):
  workdir = str(tmp_path)
  config = tiny_config(
    **{
      "optim.base_lr": 1e38,
      "optim.warmup_steps": 0,
      "checkpoint_every_steps": 1,
      "max_skipped_steps": 2,
    }
  )
  # Every update overflows: each is dropped, and the third drop ends the run.
  with pytest.raises(UserError, match="3 updates were dropped"):
    train.pretrain(config, workdir)
  records = read_metrics(workdir)
  assert [r["skipped_steps"] for r in records] == [1.0, 2.0]
  state = final_state(workdir, config)
  assert int(state["step"]) == 2
  assert int(state["skipped_steps"]) == 2
  initial = train.initial_state(
    config, train.byol.make_optimizer(train.hparams(config, train.plan_run(config, 64)))
  )
  # Nothing was applied: the parameters are still the initial ones.
  jax.tree.map(np.testing.assert_array_equal, state["online_params"], initial.online_params)


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


def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_root, capsys):
  full = uninterrupted(tmp_root)
  workdir = os.path.join(tmp_root, "damaged")
  shutil.copytree(full, workdir)
  data = os.path.join(workdir, "checkpoints", "6", "state", "ocdbt.process_0", "d")
  for name in os.listdir(data):  # a write cut short: every data file truncated
    with open(os.path.join(data, name), "r+b") as f:
      f.truncate(10)
  config = tiny_config()
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  template = final_state(full, config, 3)
  step, state = ckpt.restore_latest_intact(template)
  ckpt.close()
  assert step == 3
  assert "checkpoint 6 is damaged" in capsys.readouterr().out
  jax.tree.map(np.testing.assert_array_equal, state, template)


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
  """An accelerator host that only runs the update step needs no TensorFlow."""
  code = (
    "import sys\n"
    "sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None\n"
    "import byol_jax.byol, byol_jax.encoder, byol_jax.train\n"
    "import byol_jax.data as data\n"
    "assert data.PAPER_T_PRIME.solarize_prob == 0.2\n"
    "try:\n"
    "  data.make_source\n"
    "except ImportError:\n"
    "  print('data modules load on use')\n"
  )
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == "data modules load on use"
