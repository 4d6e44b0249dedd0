"""SIGTERM / SIGINT: a checkpoint, exit 0, and a resumed run that repeats the uninterrupted one.

The mid-run test runs the real command line in subprocesses (2 CPU devices each) and signals the
process while it trains; multi-process signals are tested in tests/test_multihost.py.
"""

import os
import signal

import jax
import numpy as np
import processes
import pytest
from tiny import read_metrics, tiny_config, tiny_flags

from byol_jax import checkpointing, preemption, train

# Enough steps that a signal sent at the first progress line lands mid-run.
STEPS = 60
OVERRIDES = {"num_steps": STEPS, "checkpoint_every_steps": 25}


def _args(workdir):
  return ["--config=configs/synthetic.py", f"--workdir={workdir}", *tiny_flags(**OVERRIDES)]


def _final_state(workdir):
  config = tiny_config(**OVERRIDES)
  optimizer = train.byol.make_optimizer(train.hparams(config, train.plan_run(config, 64)))
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    return ckpt.restore(train.initial_state(config, optimizer)._asdict())
  finally:
    ckpt.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run."""
  log_dir = str(tmp_path_factory.mktemp("reference"))
  workdir = os.path.join(log_dir, "reference")
  processes.wait([processes.Run("reference", log_dir, 2, _args(workdir))])
  return workdir


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_run_checkpoints_exits_0_and_the_resumed_run_matches(tmp_path, reference, sig):
  workdir = str(tmp_path / "signalled")
  run = processes.Run("signalled", str(tmp_path), 2, _args(workdir))
  processes.wait_for_output(run, f"step 1/{STEPS}")
  run.proc.send_signal(sig)
  processes.wait([run])
  stopped = [line for line in run.stdout.splitlines() if line.startswith("Stopped by")]
  assert len(stopped) == 1, run.report()
  step = int(stopped[0].split(" at step ")[1].split(";")[0])
  assert stopped[0].startswith(f"Stopped by {signal.Signals(sig).name} at step {step}")
  assert 1 <= step < STEPS
  assert str(step) in os.listdir(os.path.join(workdir, "checkpoints"))

  resumed = processes.Run("resumed", str(tmp_path), 2, _args(workdir))
  processes.wait([resumed])
  assert f"starting at step {step}" in resumed.stdout
  a, b = read_metrics(reference), read_metrics(workdir)
  assert [r["step"] for r in b] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-6)
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
    _final_state(workdir),
    _final_state(reference),
  )


def test_signal_during_set_up_ends_the_run_before_training(tmp_path, capsys):
  """A SIGTERM that arrives during the set-up (scan, restore, compile) ends the run cleanly."""
  with preemption.StopSignals() as signals:
    os.kill(os.getpid(), signal.SIGTERM)
    train.pretrain(tiny_config(), str(tmp_path), signals)
  assert "Stopped by SIGTERM before step 1: nothing new to save" in capsys.readouterr().out
  checkpoints = os.path.join(tmp_path, "checkpoints")
  assert not os.path.isdir(checkpoints) or not os.listdir(checkpoints)


def test_a_second_signal_exits_at_once():
  with preemption.StopSignals() as signals:
    os.kill(os.getpid(), signal.SIGINT)
    assert signals.signal_name == "SIGINT"
    with pytest.raises(SystemExit) as exit_info:
      os.kill(os.getpid(), signal.SIGTERM)
  assert exit_info.value.code == 128 + signal.SIGTERM
