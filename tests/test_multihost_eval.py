"""Linear evaluation and fine-tuning as 2 processes x 2 CPU devices report what 1 process x 4
devices reports: the accuracy over the whole test set, with the same learning rate chosen.

Each evaluation is the real command line (``python -m byol_jax.main``) in subprocesses, through the
harness of ``tests/processes.py`` (gloo collectives on 127.0.0.1); each process reads its own shard
of the test and validation data. The checkpoint comes from a tiny pretraining run in this process.
"""

import json
import os

import numpy as np
import processes
import pytest
import tiny

from byol_jax import train

# 64 training and 64 test images of 4 classes; 2 learning rates, picked on held-out images.
EVAL = {
  "model.encoder": "checkpoint",
  "data.synthetic_classes": 4,
  "eval.batch_size": 16,
  "eval.num_steps": 2,
  "eval.log_every_steps": 1,
  "eval.base_lrs": "(0.1,1.0)",
  "eval.val_examples": 16,
}
# Linear evaluation on centre-crop features, encoded once (the path that gathers the features of
# all processes; its steps are cheap, and after 10 the validation picks the second lr); fine-tuning
# on crop + flip views of half the labels.
MODES = {
  "linear_eval": {"eval.train_augment": "none", "eval.num_steps": 10},
  "finetune": {"eval.label_fraction": 0.5},
}
RESULT_LINE = {"linear_eval": "Linear evaluation: top-1", "finetune": "Fine-tuning on 50%"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A tiny pretraining run's workdir (the suite's common tiny config: its step is often cached)."""
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  train.pretrain(tiny.tiny_config(), workdir)
  return workdir


@pytest.fixture(scope="module")
def references(checkpoint, tmp_path_factory):
  """Each mode's workdir and run as 1 process x 4 devices; both at once (one core each)."""
  log_dir = str(tmp_path_factory.mktemp("one_process"))
  workdirs = {mode: os.path.join(log_dir, mode) for mode in MODES}
  runs = {
    mode: processes.Run(mode, log_dir, 4, _args(mode, checkpoint, workdirs[mode])) for mode in MODES
  }
  processes.wait(list(runs.values()))
  return {mode: (workdirs[mode], runs[mode]) for mode in MODES}


def _args(mode, checkpoint, workdir, *extra):
  overrides = {"mode": mode, "checkpoint": checkpoint, **EVAL, **MODES[mode]}
  flags = tiny.tiny_flags(**overrides)
  return ["--config=configs/synthetic.py", f"--workdir={workdir}", *flags, *extra]


def _result_line(run, mode):
  lines = [line for line in run.stdout.splitlines() if line.startswith(RESULT_LINE[mode])]
  assert len(lines) == 1, run.report()
  return lines[0]


def _losses(run):
  """The training losses the run printed, per logged step (one per learning rate or one)."""
  lines = [line.split("| loss ")[1] for line in run.stdout.splitlines() if "| loss " in line]
  return [[float(x) for x in line.split(",")] for line in lines]


def _results(workdir, mode):
  with open(os.path.join(workdir, f"{mode}.json")) as f:
    return json.load(f)


@pytest.mark.parametrize("mode", list(MODES))
def test_two_processes_evaluate_like_one(mode, checkpoint, references, tmp_path):
  single, reference_run = references[mode]
  multi = str(tmp_path / "two_processes")
  port = processes.free_port()
  runs = [
    processes.Run(f"process_{i}", str(tmp_path), 2, _args(mode, checkpoint, multi, *flags))
    for i, flags in enumerate(processes.process_flags(2, port))
  ]
  processes.wait(runs)
  p0, p1 = runs

  # Only process 0 reports and writes results.
  assert p1.stdout == "", p1.stdout
  got, want = _results(multi, mode), _results(single, mode)
  # The whole test set, not process 0's shard of it.
  assert want["test_examples"] == got["test_examples"] == 64, (got, want)
  # The learning rate is chosen on the validation accuracy of all processes' examples.
  assert got["base_lr"] == want["base_lr"]
  for key in ("top1", "top5", "val_top1"):
    assert got[key] == pytest.approx(want[key], abs=1e-6), (key, got, want)
  if mode == "linear_eval":
    assert got["val_top1_per_lr"] == pytest.approx(want["val_top1_per_lr"], abs=1e-6)
  # The same global batches: the training losses agree (printed to 4 decimals).
  want_losses = _losses(reference_run)
  assert len(want_losses) in (10, 4), reference_run.stdout  # 10 steps, or 2 steps x 2 lrs
  np.testing.assert_allclose(_losses(p0), want_losses, atol=2e-4)
  assert _result_line(p0, mode) == _result_line(reference_run, mode)
  assert tiny.read_metrics(multi)[-1]["top1"] == got["top1"]
