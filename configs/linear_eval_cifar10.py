"""Linear evaluation on CIFAR-10 (TFDS ``cifar10``) of any BYOL checkpoint of a small-image preset.

  python -m byol_jax.main --config=configs/linear_eval_cifar10.py --config.checkpoint=RUN \
    --workdir=OUT

The architecture and the evaluation view come from the checkpoint (``data.image_size = 0``: its
run's ``data.eval_image_size`` and ``data.eval_resize``, e.g. 32x32 for ``byol_cifar10.py``,
the 64x64 upsampled images for ``byol_cifar10_cpu.py``). ``--config.data.source=folder
--config.data.path=DIR --config.data.holdout=5000`` evaluates on an image folder instead (the
held-out images are the test set; use the pretraining run's hold-out and seed).

The paper's classifier (a linear layer on the frozen encoder's representation, SGD + Nesterov
0.9, cosine decay, no weight decay, batch 512, 100 epochs), with two departures from its
protocol that make it converge on any of these checkpoints in seconds to minutes: the
classifier reads standardised features (each dimension shifted and scaled by its mean and
standard deviation over the training views), and the training views are the centre views,
encoded once (``eval.train_augment = "none"``). A log-spaced grid of base learning rates over
three decades trains side by side on the same features; the best on 5,000 training images is
tested, and a warning says when it is at an end of the grid. The paper's protocol as it was:
``--config.eval.standardize_features=False --config.eval.train_augment=crop_flip``.
"""

from byol_jax import config_base


def get_config():
  c = config_base.get_base_config()
  c.mode = "linear_eval"
  c.data.source = "tfds"
  c.data.name = "cifar10"
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.image_size = 0  # the checkpoint's evaluation view
  c.model.encoder = "checkpoint"
  c.eval.batch_size = 512
  c.eval.num_epochs = 100.0
  c.eval.base_lrs = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
  c.eval.val_examples = 5000
  c.eval.standardize_features = True
  c.eval.train_augment = "none"
  c.eval.log_every_steps = 1000
  return c
