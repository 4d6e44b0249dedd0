"""Tiny configs and helpers shared by the end-to-end tests: a 16 px synthetic dataset, the tiny
ResNet, image folders and saved states."""

import json
import os

import numpy as np
from PIL import Image

from byol_jax import checkpointing, config_base, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def set_fields(config, **overrides):
  """Sets dotted fields: ``set_fields(c, **{"model.encoder": "tiny"})``."""
  return config_base.set_fields(config, overrides)


# Overrides of the base config that make a pretraining run compile and run in seconds on the CPU.
TINY = {
  "data.source": "synthetic",
  "data.synthetic_examples": 64,
  "data.image_size": 16,
  "data.eval_resize": 16,
  "model.encoder": "tiny",
  "model.small_image_stem": True,
  "model.projector_hidden": 32,
  "model.projector_output": 16,
  "model.predictor_hidden": 32,
  "batch_size": 16,
  "num_steps": 6,
  "optim.base_lr": 2.0,
  "optim.warmup_steps": 2,
  "log_every_steps": 1,
  "checkpoint_every_steps": 3,
}


def tiny_config(**overrides):
  """A pretraining config that compiles and runs in seconds on the CPU (batch 16, 6 steps)."""
  return set_fields(config_base.get_base_config(), **{**TINY, **overrides})


def tiny_flags(**overrides):
  """:data:`TINY` and ``overrides`` as ``--config.*`` command-line flags."""
  return [f"--config.{key}={value}" for key, value in {**TINY, **overrides}.items()]


def load_config_module(name):
  """The module of ``configs/<name>.py``."""
  return config_base.load_config_module(os.path.join(REPO, "configs", f"{name}.py"))


def read_metrics(workdir):
  """The records of ``<workdir>/metrics.jsonl``."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def monitored_config(**overrides):
  """The shared tiny pretraining config, with the monitor, probe and short evaluations on."""
  defaults = {
    "data.synthetic_classes": 4,
    "num_steps": 4,
    "optim.warmup_steps": 1,
    "log_every_steps": 2,
    "checkpoint_every_steps": 4,
    "eval.knn_every_steps": 2,
    "eval.knn_k": 20,
    "eval.knn_train_examples": 48,
    "eval.online_probe_classes": 4,
    "eval.batch_size": 16,
    "eval.num_steps": 2,
    "eval.log_every_steps": 1,
  }
  return tiny_config(**{**defaults, **overrides})


def write_folder(root, classes=3, per_class=8, size=(20, 24), ext="png", flat=False):
  """An image folder of random images (height, width = ``size``; PNG, or JPEG for ``ext="jpg"``),
  ``<root>/class_<c>/`` (or all in ``root`` when ``flat``); returns ``root`` as a string."""
  rng = np.random.default_rng(0)
  for c in range(classes):
    folder = root if flat else os.path.join(root, f"class_{c}")
    os.makedirs(folder, exist_ok=True)
    for i in range(per_class):
      pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(os.path.join(folder, f"img_{c}_{i}.{ext}"))
  return str(root)


def final_state(workdir, config, step=None):
  """The train state saved in ``<workdir>/checkpoints`` (the newest, or ``step``'s)."""
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  optimizer = train.byol.make_optimizer(train.hparams(config, train.plan_run(config, 64)))
  state = ckpt.restore(train.initial_state(config, optimizer)._asdict(), step)
  ckpt.close()
  return state
