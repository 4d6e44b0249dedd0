"""Config-file loading, dotted overrides and derived config values."""

import glob
import os
import subprocess
import sys

import pytest
from tiny import REPO, tiny_config

from byol_jax import config_base
from byol_jax.errors import UserError


def test_load_config_file_passes_the_argument_after_the_colon():
  path = os.path.join(REPO, "configs", "byol_cifar10_cpu.py")
  config = config_base.load_config_file(f"{path}:/data/cifar10/train")
  assert config.data.path == "/data/cifar10/train"
  assert config_base.load_config_file(path).data.path == ""


def test_set_fields_reads_strings_as_the_fields_type():
  config = config_base.get_base_config()
  config_base.set_fields(
    config,
    {
      "model.encoder": "tiny",
      "batch_size": "32",
      "optim.base_lr": "1e-3",
      "data.host_colour_ops": "False",
    },
  )
  assert config.model.encoder == "tiny"
  assert config.batch_size == 32
  assert config.optim.base_lr == pytest.approx(1e-3)
  assert config.data.host_colour_ops is False
  with pytest.raises(KeyError):
    config_base.set_fields(config, {"model.no_such_field": 1})


def test_eval_image_size_defaults_to_the_training_size():
  config = config_base.get_base_config()
  config.data.image_size = 16
  assert config_base.eval_image_size(config.data) == 16
  config.data.eval_image_size = 32
  assert config_base.eval_image_size(config.data) == 32


def test_eval_view_sizes_keep_the_resize_ratio_at_another_size():
  data = config_base.get_base_config().data
  data.eval_image_size, data.eval_resize = 224, 256
  assert config_base.eval_view_sizes(data) == (224, 256)
  assert config_base.eval_view_sizes(data, 224) == (224, 256)
  assert config_base.eval_view_sizes(data, 112) == (112, 128)
  data.eval_image_size, data.eval_resize = 64, 64  # e.g. CIFAR-10 upsampled 2x
  assert config_base.eval_view_sizes(data, 32) == (32, 32)


def test_optimizer_fields_are_validated_and_reach_the_hyperparameters():
  from byol_jax import train

  config = config_base.get_base_config()
  assert config.optim.optimizer == "lars"
  config_base.set_fields(config, {"optim.optimizer": "sgd", "optim.predictor_lr_multiplier": "10"})
  config_base.validate_config(config)
  hp = train.hparams(config, train.plan_run(config, 64))
  assert hp.optimizer == "sgd"
  assert hp.predictor_lr_multiplier == 10.0
  config.optim.optimizer = "rmsprop"
  with pytest.raises(UserError, match="optimizer"):
    config_base.validate_config(config)
  config.optim.optimizer = "adamw"
  config.optim.predictor_lr_multiplier = 0.0
  with pytest.raises(UserError, match="predictor_lr_multiplier"):
    config_base.validate_config(config)


@pytest.mark.parametrize(
  ("field", "value"),
  [
    ("tiny_blocks", "(0,0,0,0)"),
    ("tiny_blocks", "(1,1,1)"),
    ("tiny_blocks", "(1,-1,1,1)"),
    ("tiny_channels", "(8,16,32)"),
    ("tiny_channels", "(8,0,32,64)"),
    ("tiny_channels", "(8,16,32,64.5)"),
  ],
)
def test_tiny_stages_are_validated(field, value):
  config = config_base.get_base_config()
  config_base.set_fields(config, {f"model.{field}": value})
  with pytest.raises(UserError, match=field):
    config_base.validate_config(config)


def _config_cases():
  """(name, config) of every file in configs/, with each of its presets (``file.py:arg``)."""
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
    module = config_base.load_config_module(path)
    name = os.path.basename(path)
    if name == "byol_cifar10_cpu.py":  # its argument is the image folder
      yield name, module.get_config("/data/cifar10/train")
      continue
    for arg in getattr(module, "PRESETS", {None: None}):
      yield f"{name}:{arg}", module.get_config(str(arg)) if arg is not None else module.get_config()


def test_every_config_file_validates():
  names = []
  for name, config in _config_cases():
    if config.mode != "pretrain":
      config.checkpoint = "/some/run"
    config_base.validate_config(config)
    names.append(name)
  assert len(names) >= 9, names  # 7 files, byol_r50 and finetune_r50 with several presets


# A tfds linear evaluation with an lr sweep: where eval.val_examples is used.
_SWEEP = {
  "mode": "linear_eval",
  "checkpoint": "/some/run",
  "data.source": "tfds",
  "data.name": "cifar10",
  "eval.base_lrs": (0.1, 0.4),
}


@pytest.mark.parametrize(
  ("field", "value", "context"),
  [
    ("log_every_steps", 0, {}),
    ("checkpoint_every_steps", 0, {}),
    ("keep_checkpoints", 0, {}),
    ("max_skipped_steps", -1, {}),
    ("num_steps", -2, {}),
    ("num_epochs", 0.0, {}),
    ("seed", -1, {}),
    ("prng_impl", "mt19937", {}),
    ("data.image_size", 4, {}),
    ("data.image_size", 0, {}),  # 0 (the checkpoint's view) only where a checkpoint is read
    ("data.image_size", 4, _SWEEP),
    ("data.image_size", -1, {**_SWEEP, "mode": "embed"}),
    ("data.eval_image_size", 4, {}),
    ("data.eval_resize", 24, {"data.image_size": 32}),
    ("data.eval_resize", 32, {"data.image_size": 16, "data.eval_image_size": 64}),
    ("data.synthetic_examples", 0, {}),
    ("data.synthetic_classes", 0, {}),
    ("data.shuffle_buffer", -1, {}),
    ("data.holdout", -5, {}),
    ("data.holdout_seed", -1, {}),
    ("data.train_split", "", {}),
    ("model.width_multiplier", 0, {}),
    ("model.projector_hidden", 0, {}),
    ("model.projector_output", 0, {}),
    ("model.predictor_hidden", 0, {}),
    ("model.bn_decay", 1.0, {}),
    ("model.bn_eps", 0.0, {}),
    ("model.normalization", "layer", {}),
    ("model.resnet_layout", "caffe", {}),
    ("model.projector_layers", 0, {}),
    ("model.predictor_layers", -1, {}),
    ("model.head_batchnorm", "output", {}),
    ("model.head_batchnorm", "all", {"model.normalization": "group_ws"}),
    ("optim.tau_schedule", "linear", {}),
    ("optim.freeze_predictor", True, {"model.predictor": False}),
    ("loss.similarity", "l2", {}),
    ("loss.similarity", "cross_entropy", {"loss.infonce_weight": 1.0}),
    ("loss.stop_gradient", False, {}),  # a target network of its own: nothing to stop
    ("loss.stop_gradient", False, {"optim.tau_base": 0.0}),  # annealed from 0: still a target
    ("loss.infonce_weight", -1.0, {}),
    ("loss.infonce_temperature", 0.0, {}),
    ("optim.momentum", 1.5, {}),
    ("optim.momentum", float("nan"), {}),
    ("optim.weight_decay", -1e-4, {}),
    ("optim.trust_coefficient", 0.0, {}),
    ("optim.warmup_epochs", -1.0, {}),
    ("optim.warmup_steps", -2, {}),
    ("optim.tau_base", 1.2, {}),
    ("augment.view1.flip_prob", -0.1, {}),
    ("augment.view2.blur_prob", 1.1, {}),
    ("augment.view1.brightness", -0.4, {}),
    ("augment.view2.hue", 0.6, {}),
    ("augment.view1.blur_sigma_min", 3.0, {}),  # above blur_sigma_max=2.0: the order reversed
    ("augment.view2.blur_sigma_min", 0.0, {}),
    ("augment.view1.blur_kernel_fraction", 0.0, {}),
    ("augment.view1.crop_area_min", 0.0, {}),
    ("augment.view2.crop_area_min", 0.9, {"augment.view2.crop_area_max": 0.5}),
    ("augment.view1.crop_aspect_min", 2.0, {}),
    ("eval.batch_size", 0, {}),
    ("eval.num_epochs", 0.0, _SWEEP),
    ("eval.val_examples", 0, _SWEEP),
    ("eval.val_examples", 0, {**_SWEEP, "mode": "finetune"}),
    ("eval.label_fraction", 1.5, {}),
    ("eval.label_seed", -1, {}),
    ("eval.log_every_steps", 0, {}),
    ("eval.weight_decay", -1.0, {}),
    ("eval.train_augment", "rotate", {}),
    ("eval.knn_every_steps", -1, {}),
    ("eval.knn_k", 0, {}),
    ("eval.knn_temperature", 0.0, {}),
    ("eval.knn_train_examples", -1, {}),
    ("eval.knn_eval_examples", -1, {}),
    ("eval.knn_image_size", 4, {}),
    ("eval.online_probe_classes", -1, {}),
  ],
)
def test_bad_value_is_one_line_naming_the_field(field, value, context):
  config = config_base.set_fields(config_base.get_base_config(), context)
  config_base.set_fields(config, {field: value})
  with pytest.raises(UserError) as error:
    config_base.validate_config(config)
  message = str(error.value)
  assert message.startswith(f"config.{field}="), message
  assert f"--config.{field}=" in message, message  # a corrected flag
  assert "\n" not in message


def test_zero_means_off_and_unused_values_are_accepted():
  config = config_base.get_base_config()
  config_base.set_fields(
    config,
    {
      "max_skipped_steps": 0,
      "data.shuffle_buffer": 0,
      "data.holdout": 0,
      "eval.knn_every_steps": 0,
      "eval.knn_train_examples": 0,
      "optim.warmup_steps": -1,
      "optim.momentum": 0.0,
      "num_epochs": 0.0,
      "num_steps": 5,  # overrides num_epochs
      "augment.view1.blur_sigma_max": 0.1,  # equal bounds: a fixed sigma
    },
  )
  config_base.validate_config(config)
  # One base lr: nothing is held out, so eval.val_examples is not used.
  config_base.set_fields(config, {**_SWEEP, "eval.base_lrs": (0.4,), "eval.val_examples": 0})
  config_base.validate_config(config)
  # Evaluations at the checkpoint's own view (its size and resize).
  for mode in ("linear_eval", "finetune", "embed"):
    config_base.set_fields(config, {"mode": mode, "data.image_size": 0, "data.eval_resize": 1})
    config_base.validate_config(config)


def test_pretrain_checks_the_config_before_any_work(tmp_path):
  from byol_jax import train

  workdir = tmp_path / "run"
  with pytest.raises(UserError, match=r"config\.log_every_steps=0"):
    train.pretrain(tiny_config(log_every_steps=0), str(workdir))
  assert not workdir.exists()


def test_command_line_rejects_a_bad_count_in_one_line(tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "byol_jax.main",
      f"--workdir={workdir}",
      "--config.checkpoint_every_steps=0",
    ],
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, lines
  assert lines[0].startswith("error: config.checkpoint_every_steps=0 must be"), lines
  assert not workdir.exists()
