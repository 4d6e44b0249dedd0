"""The reference presets (CIFAR-10/100, STL-10, Imagenette) run on TFDS mock data, and each names
the published figure it should reach."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tiny import load_config_module

from byol_jax import config_base, train

PRESETS = ["byol_cifar10", "byol_cifar100", "byol_stl10", "byol_imagenette", "simsiam_cifar10"]


@pytest.mark.parametrize("name", PRESETS)
def test_preset_runs_a_few_steps_on_mock_data(name, tmp_path):
  module = load_config_module(name)
  config = module.get_config()
  config_base.validate_config(config)
  assert config.model.encoder == "resnet18"
  for figure, source in module.PUBLISHED.values():
    assert 0 < figure < 100
    assert source
  assert (module.__doc__ or "").count("python -m byol_jax.main") >= 2  # pretrain and evaluate
  # The preset's data, augmentation, pipeline and optimiser; a tiny network and batch, so that
  # the four compile in seconds (ResNet-18 itself is tested elsewhere).
  config.model.encoder = "tiny"
  config.model.conv_impl = "xla"
  config.data.image_size = min(config.data.image_size, 32)
  config.data.eval_resize = config.data.image_size
  config.batch_size = 8
  config.num_steps = 2
  config.log_every_steps = 1
  config.eval.knn_every_steps = 0
  with tfds.testing.mock_data(num_examples=16):
    metrics = train.pretrain(config, str(tmp_path))
  assert np.isfinite(metrics["loss"])
