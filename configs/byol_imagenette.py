"""BYOL ResNet-18 on Imagenette (TFDS ``imagenette/160px``) at 128 px: the original code's recipe.

Published: **about 92.3% online top-1** (the online linear probe on the validation split) after
1000 epochs, in about 4 hours on one V100 (the original BYOL code's Imagenette recipe).

The recipe: ResNet-18 (ImageNet stem) on 128x128 views, batch 256, LARS with lr 2.0 (``base_lr``
2.0 at batch 256), weight decay 1e-6, 1000 epochs, the paper's augmentations; the rest (τ_base
0.996, 10 warm-up epochs, trust coefficient 1e-3, 4096 -> 256 heads) as in the paper. The online
probe (``eval.online_probe_classes=10``, as in the original code: a linear classifier on the
online encoder's stop-gradient features, trained alongside) gives the "online top-1" of the kNN
monitor's lines. Imagenette's images differ in size, so the input stays on tf.data
(``data.pipeline="tfdata"``); evaluation resizes the short side to 146 px and centre-crops 128.

  python -m byol_jax.main --config=configs/byol_imagenette.py --workdir=runs/byol_imagenette
  python -m byol_jax.main --config=configs/linear_eval_cifar10.py \
    --config.data.name=imagenette/160px --config.data.eval_split=validation \
    --config.checkpoint=runs/byol_imagenette --workdir=runs/byol_imagenette/linear
"""

from byol_jax import config_base

PUBLISHED = {"online_top1": (92.3, "original BYOL code, ResNet-18, 128 px, 1000 epochs")}


def get_config(epochs: str = "1000"):
  c = config_base.get_base_config()
  c.data.source = "tfds"
  c.data.name = "imagenette/160px"
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = 128
  c.data.eval_resize = 146
  c.model.encoder = "resnet18"
  c.batch_size = 256
  c.num_epochs = float(epochs)
  c.optim.base_lr = 2.0
  c.optim.weight_decay = 1e-6
  c.eval.online_probe_classes = 10
  c.eval.knn_every_steps = 37 * 50  # every 50 epochs (9,469 images: 36 steps per epoch)
  c.log_every_steps = 37
  c.checkpoint_every_steps = 37 * 10
  return c
