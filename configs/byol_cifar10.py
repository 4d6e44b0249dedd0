"""BYOL ResNet-18 on CIFAR-10 (TFDS ``cifar10``): solo-learn's recipe, the whole input on the device.

Published: **92.58% linear top-1** after 1000 epochs (solo-learn's README, ResNet-18 with the
small-image stem, this recipe); **86.9% kNN top-1** (k = 200) after 200 epochs and 91.0% after 800
(lightly's benchmark table, ResNet-18, batch 128 / 512; ``:200`` and ``:800`` here).

The recipe (solo-learn's ``scripts/pretrain/cifar/byol.yaml``): ResNet-18 with the small-image stem
(3x3 stride-1 first convolution, no max-pool) at 32x32; projector and predictor 4096 -> 256;
batch 256; LARS with lr 1.0 (``base_lr`` 1.0 at batch 256), trust coefficient 0.02, weight decay
1e-5, biases and normalisation parameters excluded; 10 warm-up epochs, cosine decay; τ from 0.99
to 1; the paper's augmentations without blur (T and T' alike; solarisation 0.2 in T' only).
solo-learn's LARS also caps the trust-scaled rate at the base rate (``clip_lr``), which
byol_jax's LARS does not. ``data.pipeline="device"``: the 50,000 images are decoded once and
every augmentation runs inside the step (BENCHMARKS.md: faster on the CPU; on an accelerator the
host then only gathers uint8 images).

  python -m byol_jax.main --config=configs/byol_cifar10.py --workdir=runs/byol_cifar10
  python -m byol_jax.main --config=configs/linear_eval_cifar10.py \
    --config.checkpoint=runs/byol_cifar10 --workdir=runs/byol_cifar10/linear

``--config.data.source=folder --config.data.path=DIR --config.data.holdout=5000`` trains on an
image folder of the same kind instead. On a machine without TensorFlow (an accelerator host with
JAX only), prepare the splits once where TensorFlow is, carry the folder of files, and train from it:

  python -m byol_jax.main --config=configs/byol_cifar10.py --config.mode=prepare --workdir=data/cifar10
  python -m byol_jax.main --config=configs/byol_cifar10.py --config.data.source=prepared \
    --config.data.path=data/cifar10 --workdir=runs/byol_cifar10
 The kNN monitor reports kNN top-1 on the test split every
``eval.knn_every_steps`` steps (k = 200, T = 0.1, as lightly's table).
"""

from byol_jax import config_base

PUBLISHED = {
  "linear_top1": (92.58, "solo-learn README, ResNet-18, 1000 epochs"),
  "knn_top1": (86.9, "lightly benchmarks, ResNet-18, 200 epochs"),
}


def get_config(epochs: str = "1000"):
  c = config_base.get_base_config()
  c.data.source = "tfds"
  c.data.name = "cifar10"
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.image_size = 32
  c.data.eval_resize = 32
  c.data.pipeline = "device"
  for view in (c.augment.view1, c.augment.view2):
    view.blur_prob = 0.0
  c.model.encoder = "resnet18"
  c.model.small_image_stem = True
  c.batch_size = 256
  c.num_epochs = float(epochs)
  c.optim.base_lr = 1.0
  c.optim.trust_coefficient = 0.02
  c.optim.weight_decay = 1e-5
  c.optim.tau_base = 0.99
  c.optim.warmup_epochs = 10.0
  c.eval.knn_every_steps = 195 * 10  # every 10 epochs
  c.eval.knn_train_examples = 0  # the whole training split
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1950
  return c
