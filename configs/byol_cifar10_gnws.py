"""BYOL ResNet-18 on CIFAR-10 without batch statistics: GroupNorm + weight standardisation.

``configs/byol_cifar10.py`` (small-image stem, 32x32, batch 512, 1000 epochs, LARS base lr 1.0,
weight decay 1e-5, τ_base 0.99, no blur) with ``model.normalization="group_ws"``: every
BatchNorm of the encoder, projector and predictor becomes a GroupNorm and every convolution is
weight-standardised, after "BYOL works even without batch statistics" (Richemond et al. 2020;
the layers and choices are described with that field in ``byol_jax/config_base.py``). The
optimisation hyperparameters are the BatchNorm recipe's, unchanged and untuned for GN + WS.
Without batch statistics, ``--config.optim.grad_accum_steps=k`` gives exactly the update of the
whole batch whatever the device count.
"""

import os

from byol_jax import config_base

BN_RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "byol_cifar10.py")


def get_config():
  c = config_base.load_config_module(BN_RECIPE).get_config()
  c.model.normalization = "group_ws"
  return c
