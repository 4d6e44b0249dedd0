"""BYOL ResNet-18 on CIFAR-10 (TFDS ``cifar10``): the usual small-image recipe.

ResNet-18 with the small-image stem (3x3 stride-1 first conv, no max-pool) at 32x32, batch 512,
1000 epochs, LARS with base lr 1.0, weight decay 1e-5, τ_base 0.99, and no Gaussian blur (it
mostly erases 32x32 images). ``--config.data.source=folder --config.data.path=DIR`` trains on an
image folder of the same kind instead.
"""

from byol_jax import config_base


def get_config():
  c = config_base.get_base_config()
  c.data.source = "tfds"
  c.data.name = "cifar10"
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.image_size = 32
  c.data.eval_resize = 32
  c.augment.view1.blur_prob = 0.0
  c.augment.view2.blur_prob = 0.0
  c.model.encoder = "resnet18"
  c.model.small_image_stem = True
  c.batch_size = 512
  c.num_epochs = 1000.0
  c.optim.base_lr = 1.0
  c.optim.weight_decay = 1e-5
  c.optim.tau_base = 0.99
  c.optim.warmup_epochs = 10.0
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  return c
