"""SimSiam ResNet-50 on ImageNet (TFDS ``imagenet2012``): Chen & He 2020 (arXiv 2011.10566).

SimSiam is BYOL without the momentum encoder: the targets are the online network's own
projections under stop-gradient (``optim.tau_schedule="constant"``, ``optim.tau_base=0``; no
target network is kept). ``configs/simsiam_r50.py`` is the paper's 100-epoch ablation baseline
(batch 512); ``:200``, ``:400``, ``:800`` the longer runs of its Table 4.

Published linear top-1 (ImageNet validation; the paper's linear protocol is LARS, base lr 0.02,
batch 4096, 90 epochs): **68.1%** after 100 epochs (Table 2 at batch 512, Table 4 at 256),
70.0 / 70.8 / 71.3% after 200 / 400 / 800 epochs (Table 4, batch 256).

The recipe (Section 3 and Appendix A): SGD, momentum 0.9, lr = 0.05 x batch / 256, weight decay
1e-4, cosine decay without warm-up (warm-up only for batches of 1024 and more); the predictor's
lr is not decayed (Table 1c, the default from Section 4.3). Projector: 3 linear layers of 2048
with BatchNorm after each, the output's without scale and offset, ReLU on the hidden ones
(``model.head_batchnorm="hidden+projector_output"``); predictor 2048 -> 512 -> 2048, BatchNorm
on the hidden layer only. Augmentations (MoCo v2's): random resized crop from 20% of the image
(torchvision's redraws: ``crop_scheme="rejection"``), flip, colour jitter (0.4, 0.4, 0.4, 0.1)
with probability 0.8, grayscale 0.2, Gaussian blur (sigma 0.1-2) with probability 0.5, the
same for both views, no solarisation.

Units: byol_jax's loss is BYOL's, ``(2 - 2 cos) + (2 - 2 cos)`` per pair of views, 4 times
SimSiam's ``-(cos + cos) / 2`` plus a constant, so its gradient is 4 times SimSiam's. SGD with
lr/4 and weight decay x4 makes exactly SimSiam's update: base_lr 0.0125 is SimSiam's 0.05 and
weight_decay 4e-4 its 1e-4. Departures: weight decay skips biases and normalisation parameters
(SimSiam decays every parameter); the hidden linear layers keep a bias (SimSiam's have none; a
bias before BatchNorm is cancelled by it) and the predictor's output layer has none (SimSiam's
has one); the encoder's residual blocks start their last BatchNorm scale at zero, as SimSiam's.

  python -m byol_jax.main --config=configs/simsiam_r50.py --workdir=runs/simsiam_r50
  python -m byol_jax.main --config=configs/linear_eval_r50.py \
    --config.checkpoint=runs/simsiam_r50 --workdir=runs/simsiam_r50/linear
"""

import os

from byol_jax import config_base

BYOL_R50 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "byol_r50.py")
# epochs -> published ImageNet linear top-1 (%).
PRESETS = {100: 68.1, 200: 70.0, 400: 70.8, 800: 71.3}
PUBLISHED = {"linear_top1": (68.1, "SimSiam (Chen & He 2020), Table 2 / Table 4, 100 epochs")}
# The loss-gradient ratio between byol_jax's loss and SimSiam's (see the docstring).
GRADIENT_RATIO = 4.0


def simsiam_view() -> dict:
  """SimSiam's augmentation of either view, in byol_jax's fields."""
  return dict(
    config_base.PAPER_VIEW1,
    crop_area_min=0.2,
    crop_scheme="rejection",
    brightness=0.4,
    contrast=0.4,
    saturation=0.4,
    hue=0.1,
    blur_prob=0.5,
    solarize_prob=0.0,
  )


def set_simsiam_method(c, base_lr: float, weight_decay: float, pred_hidden: int) -> None:
  """SimSiam's algorithm on config ``c``: no target network, its heads' BatchNorm, SGD at
  SimSiam's ``base_lr`` and ``weight_decay`` (converted to byol_jax's loss), the predictor's lr
  not decayed."""
  c.optim.tau_schedule = "constant"
  c.optim.tau_base = 0.0
  c.optim.predictor_lr_decay = False
  c.optim.optimizer = "sgd"
  c.optim.momentum = 0.9
  c.optim.base_lr = base_lr / GRADIENT_RATIO
  c.optim.weight_decay = weight_decay * GRADIENT_RATIO
  c.optim.warmup_epochs = 0.0
  c.model.head_batchnorm = "hidden+projector_output"
  c.model.predictor_hidden = pred_hidden
  c.augment.view1.update(simsiam_view())
  c.augment.view2.update(simsiam_view())


def get_config(epochs: str = "100"):
  epochs = int(epochs)
  if epochs not in PRESETS:
    raise ValueError(f"No SimSiam preset for {epochs} epochs; choose one of {sorted(PRESETS)}.")
  # BYOL's ImageNet setup (data, ResNet-50, evaluation views), then SimSiam's method.
  c = config_base.load_config_module(BYOL_R50).get_config("100")
  c.model.projector_layers = 3
  c.model.projector_hidden = 2048
  c.model.projector_output = 2048
  set_simsiam_method(c, base_lr=0.05, weight_decay=1e-4, pred_hidden=512)
  c.batch_size = 512
  c.num_epochs = float(epochs)
  c.checkpoint_every_steps = 2500
  return c
