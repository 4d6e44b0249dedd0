"""BYOL ResNet-18 on CIFAR-100 (TFDS ``cifar100``): the CIFAR-10 preset's recipe on 100 classes.

Published: **70.46% linear top-1** after 1000 epochs (solo-learn's README, ResNet-18, the recipe
of ``configs/byol_cifar10.py``, which solo-learn uses for both datasets).

  python -m byol_jax.main --config=configs/byol_cifar100.py --workdir=runs/byol_cifar100
  python -m byol_jax.main --config=configs/linear_eval_cifar10.py --config.data.name=cifar100 \
    --config.checkpoint=runs/byol_cifar100 --workdir=runs/byol_cifar100/linear
"""

import os

from byol_jax import config_base

CIFAR10 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "byol_cifar10.py")
PUBLISHED = {"linear_top1": (70.46, "solo-learn README, ResNet-18, 1000 epochs")}


def get_config(epochs: str = "1000"):
  c = config_base.load_config_module(CIFAR10).get_config(epochs)
  c.data.name = "cifar100"
  return c
