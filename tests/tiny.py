"""Tiny configs shared by the end-to-end tests: a 16 px synthetic dataset and the tiny ResNet."""

import json
import os

from byol_jax import config_base

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
