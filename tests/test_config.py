"""Config-file loading, dotted overrides and derived config values."""

import os

import pytest
from tiny import REPO

from byol_jax import config_base


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
  from byol_jax.errors import UserError

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
  from byol_jax.errors import UserError

  config = config_base.get_base_config()
  config_base.set_fields(config, {f"model.{field}": value})
  with pytest.raises(UserError, match=field):
    config_base.validate_config(config)
