"""BYOL ResNet-50 on ImageNet without batch statistics: GroupNorm + weight standardisation.

The recipe of "BYOL works even without batch statistics" (Richemond et al. 2020, arXiv
2010.10241), which reports 73.9% linear top-1 after 1000 epochs against 74.3% for BatchNorm:
``configs/byol_r50.py`` (LARS, base lr 0.2, weight decay 1.5e-6, τ_base 0.996, 10 warm-up epochs,
batch 4096, the paper's augmentations) with every BatchNorm replaced by GroupNorm and every
convolution weight-standardised, in the encoder and in the projector and predictor
(``model.normalization="group_ws"``; the layers and the choices they involve are described with
that field in ``byol_jax/config_base.py``). This preset keeps BYOL's 1000-epoch optimisation
hyperparameters: a choice, not a citation (whether that paper changed them for GN + WS is still
to be checked against its text). ``configs/byol_r50_gnws.py:300`` (or ``:100``, ``:40``) takes the BatchNorm
recipe's shorter presets in the same way.

Without batch statistics the update does not depend on how the batch is split, so the paper's
batch of 4096 runs exactly on fewer devices by accumulation, e.g. on one device:
``--config.optim.grad_accum_steps=16`` (16 micro-batches of 256, one update; add
``--config.model.remat=True`` to recompute activations instead of keeping them).
"""

import os

from byol_jax import config_base

BN_RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "byol_r50.py")
PRESETS = config_base.load_config_module(BN_RECIPE).PRESETS  # the same lengths


def get_config(epochs: str = "1000"):
  c = config_base.load_config_module(BN_RECIPE).get_config(epochs)
  c.model.normalization = "group_ws"
  return c
