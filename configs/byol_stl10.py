"""BYOL ResNet-18 on STL-10 (TFDS ``stl10``): pretraining on its unlabelled and training images.

Pretrains on ``train+unlabelled`` (105,000 images of 96x96; the 100,000 unlabelled ones carry
label -1, which the online probe skips) and evaluates on ``test`` (8,000) with a linear probe
trained on ``train`` (5,000). No published BYOL ResNet-18 figure for STL-10 is quoted here: this
preset has no reference number yet. The recipe is the CIFAR presets' (``configs/byol_cifar10.py``:
LARS lr 1.0 at batch 256, trust coefficient 0.02, weight decay 1e-5, τ from 0.99) at 96 px with
the ImageNet stem (7x7 stride-2 convolution and max-pool: 3x3 final maps) and the paper's
augmentations with blur (kernel 9 at 96 px), for 200 epochs: choices, not a citation. The
images fit in memory (2.7 GiB as uint8), so ``data.pipeline="device"``.

  python -m byol_jax.main --config=configs/byol_stl10.py --workdir=runs/byol_stl10
  python -m byol_jax.main --config=configs/linear_eval_cifar10.py --config.data.name=stl10 \
    --config.checkpoint=runs/byol_stl10 --workdir=runs/byol_stl10/linear
"""

import os

from byol_jax import config_base

CIFAR10 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "byol_cifar10.py")
PUBLISHED: dict = {}


def get_config(epochs: str = "200"):
  c = config_base.load_config_module(CIFAR10).get_config(epochs)
  c.data.name = "stl10"
  c.data.train_split = "train+unlabelled"
  c.data.image_size = 96
  c.data.eval_resize = 96
  c.model.small_image_stem = False
  base = config_base.get_base_config()
  for view, paper in ((c.augment.view1, base.augment.view1), (c.augment.view2, base.augment.view2)):
    view.blur_prob = paper.blur_prob
  c.eval.online_probe_classes = 10
  # The kNN monitor needs labels for all of its training split: see the linear evaluation above.
  c.eval.knn_every_steps = 0
  c.checkpoint_every_steps = 2000
  return c
