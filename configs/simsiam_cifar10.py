"""SimSiam ResNet-18 on CIFAR-10 (TFDS ``cifar10``): the CIFAR experiment of Chen & He 2020.

Published: **91.8% linear top-1** on the test set after 800 epochs (SimSiam, Appendix D and its
Figure D.1; SimCLR in the same setting 91.1%).

The recipe (Appendix D): ResNet-18 with the small-image stem at 32x32; a 2-layer projector with
2048-d output (BatchNorm as SimSiam's ImageNet heads, ``model.head_batchnorm =
"hidden+projector_output"``); the predictor 2048 -> 512 -> 2048 (the paper does not give its
CIFAR width; its ImageNet one); SGD, momentum 0.9, base lr 0.03 (lr = 0.03 x batch / 256), weight
decay 5e-4, batch 512, cosine decay, 800 epochs; the ImageNet augmentations without blur. lr and
weight decay are given in SimSiam's units and converted as in ``configs/simsiam_r50.py`` (byol_jax's
loss has 4 times SimSiam's gradient). ``data.pipeline="device"`` as ``configs/byol_cifar10.py``.

  python -m byol_jax.main --config=configs/simsiam_cifar10.py --workdir=runs/simsiam_cifar10
  python -m byol_jax.main --config=configs/linear_eval_cifar10.py \
    --config.checkpoint=runs/simsiam_cifar10 --workdir=runs/simsiam_cifar10/linear
"""

import os

from byol_jax import config_base

HERE = os.path.dirname(os.path.abspath(__file__))
BYOL_CIFAR10 = os.path.join(HERE, "byol_cifar10.py")
SIMSIAM_R50 = os.path.join(HERE, "simsiam_r50.py")

PUBLISHED = {"linear_top1": (91.8, "SimSiam (Chen & He 2020), Appendix D, 800 epochs")}


def get_config(epochs: str = "800"):
  # BYOL's CIFAR-10 setup (data, ResNet-18 with the small-image stem, the device pipeline, no
  # blur, the kNN monitor), then SimSiam's heads and method.
  c = config_base.load_config_module(BYOL_CIFAR10).get_config(epochs)
  c.model.projector_hidden = 2048
  c.model.projector_output = 2048
  config_base.load_config_module(SIMSIAM_R50).set_simsiam_method(
    c, base_lr=0.03, weight_decay=5e-4, pred_hidden=512
  )
  for view in (c.augment.view1, c.augment.view2):
    view.blur_prob = 0.0
  c.batch_size = 512
  c.eval.knn_every_steps = 97 * 10  # every 10 epochs
  c.checkpoint_every_steps = 970
  return c
