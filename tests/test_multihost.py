"""Two processes with 2 CPU devices each train exactly like one process with 4 devices.

Each run is the real command line (``python -m byol_jax.main``) in its own subprocess, so the
test process's 8 fake devices do not interfere: the two processes of the multi-process run meet
through ``jax.distributed`` on 127.0.0.1 and reduce across processes with gloo collectives; each
reads its own half of every global batch, as on a multi-host slice. The single-process run on 4
devices sees the same global batches, so losses, checkpoints and logs must agree.
"""

import os
import re
import signal

import jax
import numpy as np
import processes
import pytest
from tiny import read_metrics, tiny_config, tiny_flags

from byol_jax import checkpointing, train

STEPS = 30
# A checkpoint every 5 steps, all kept; metrics at every step. Enough steps that a signal sent at
# the first progress line lands mid-run.
OVERRIDES = {"num_steps": STEPS, "checkpoint_every_steps": 5, "keep_checkpoints": 6}
# One process and two differ only in the order of float32 sums (gloo across processes, XLA within
# one); training amplifies that difference chaotically (past 1e-5 relative after ~10 steps), so
# the two are compared over their first steps.
COMPARED_STEPS = 5


def _args(workdir, *extra):
  return ["--config=configs/synthetic.py", f"--workdir={workdir}", *tiny_flags(**OVERRIDES), *extra]


def _start_two_processes(log_dir, workdir, name="process"):
  port = processes.free_port()
  return [
    processes.Run(f"{name}_{i}", log_dir, 2, _args(workdir, *flags))
    for i, flags in enumerate(processes.process_flags(2, port))
  ]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  """The reference: one process with 4 devices."""
  log_dir = str(tmp_path_factory.mktemp("single"))
  workdir = os.path.join(log_dir, "one_process")
  run = processes.Run("single", log_dir, 4, _args(workdir))
  processes.wait([run])
  assert "on 4 device(s)" in run.stdout
  return workdir


def _initial_state():
  config = tiny_config(**OVERRIDES)
  optimizer = train.byol.make_optimizer(train.hparams(config, train.plan_run(config, 64)))
  return train.initial_state(config, optimizer)._asdict()


def _state(workdir, step=None):
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    return ckpt.restore(_initial_state(), step)
  finally:
    ckpt.close()


def _assert_trained_like(multi, reference_workdir, rtol, atol=1e-6, steps=STEPS, total=STEPS):
  """The metrics of the first ``steps`` steps and the state after them agree to ``rtol``."""
  records, reference = read_metrics(multi), read_metrics(reference_workdir)
  assert [r["step"] for r in records] == list(range(1, total + 1))
  for key in ("loss", "grad_norm", "projection_std"):
    np.testing.assert_allclose(
      [r[key] for r in records[:steps]],
      [r[key] for r in reference[:steps]],
      rtol=rtol,
      err_msg=key,
    )
  a, b = _state(multi, steps), _state(reference_workdir, steps)
  assert int(a["step"]) == steps
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=10 * rtol, atol=atol), a, b)
  # The updates changed the parameters: the comparison is not between two initial states.
  w = "projector/linear"
  assert not np.allclose(a["online_params"][w]["w"], _initial_state()["online_params"][w]["w"])


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
  """The same run as two processes with 2 devices each: (workdir, process runs)."""
  log_dir = str(tmp_path_factory.mktemp("two_processes"))
  workdir = os.path.join(log_dir, "two_processes")
  runs = _start_two_processes(log_dir, workdir)
  processes.wait(runs)
  return workdir, runs


def test_two_processes_train_like_one(two_processes, single):
  multi, (p0, p1) = two_processes
  assert "on 4 device(s)" in p0.stdout
  assert f"Done: {STEPS} steps" in p0.stdout
  # Only process 0 reports and writes logs; every process takes part in the checkpoints.
  assert p1.stdout == "", p1.stdout
  events = os.listdir(os.path.join(multi, "tensorboard"))
  assert len([f for f in events if f.startswith("events.out.tfevents")]) == 1, events
  for workdir in (multi, single):
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == [
      str(step) for step in range(5, STEPS + 1, 5)
    ]
  _assert_trained_like(multi, single, rtol=1e-5, atol=1e-5, steps=COMPARED_STEPS)


def test_a_signal_to_one_process_stops_both_at_the_same_step(tmp_path, two_processes):
  """SIGINT to process 1 alone: both processes checkpoint the same step and exit 0, and the
  restarted pair ends exactly like an uninterrupted pair."""
  multi = str(tmp_path / "two_processes")
  runs = _start_two_processes(str(tmp_path), multi)
  processes.wait_for_output(runs[0], f"step 1/{STEPS}")
  runs[1].proc.send_signal(signal.SIGINT)
  processes.wait(runs)
  stopped = re.search(r"Stopped by a signal to another process at step (\d+);", runs[0].stdout)
  assert stopped, runs[0].report()
  step = int(stopped.group(1))
  assert 1 <= step < STEPS
  assert str(step) in os.listdir(os.path.join(multi, "checkpoints"))

  restarted = _start_two_processes(str(tmp_path), multi, "restarted")
  processes.wait(restarted)
  assert f"starting at step {step}" in restarted[0].stdout
  assert f"Done: {STEPS} steps" in restarted[0].stdout
  _assert_trained_like(multi, two_processes[0], rtol=1e-6)


def test_two_processes_train_like_one_with_the_device_pipeline(tmp_path):
  """``data.pipeline="device"``: each process gathers its own slots of every global batch and
  augments them in the step, with keys from their global positions, so the pair trains as one."""
  extra = ("--config.data.pipeline=device", f"--config.num_steps={COMPARED_STEPS}")
  log_dir = str(tmp_path)
  single = processes.Run("one", log_dir, 4, _args(str(tmp_path / "one"), *extra))
  port = processes.free_port()
  pair = [
    processes.Run(f"pair_{i}", log_dir, 2, _args(str(tmp_path / "pair"), *flags, *extra))
    for i, flags in enumerate(processes.process_flags(2, port))
  ]
  processes.wait([single, *pair])
  assert "on 4 device(s)" in pair[0].stdout
  _assert_trained_like(
    str(tmp_path / "pair"),
    str(tmp_path / "one"),
    rtol=1e-5,
    atol=1e-5,
    steps=COMPARED_STEPS,
    total=COMPARED_STEPS,
  )
