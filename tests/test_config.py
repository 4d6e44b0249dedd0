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
