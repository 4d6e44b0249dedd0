"""The collapse signals and alarm: RankMe against numpy's SVD over 8 devices, the alarm's rule,
and whole runs: a healthy one stays silent, one without a predictor and with a target that
follows the online network warns once, and with ``stop_on_collapse`` ends with one line and
its checkpoints intact."""

import logging
import os

import jax
import numpy as np
import pytest
import tiny
from processes import run_main
from tiny import read_metrics, tiny_flags

import byol_jax
from byol_jax import checkpointing, collapse, parallel, train
from byol_jax.errors import UserError

# 60 steps of the tiny run, logged every 10: enough for the alarm's three log steps in a row.
RUN = {"num_steps": 60, "log_every_steps": 10, "checkpoint_every_steps": 20}
RUN.update({"data.synthetic_examples": 256, "data.synthetic_classes": 4})
# The BYOL paper's ablation without a predictor, with a target that follows the online network.
COLLAPSING = {"model.predictor": False, "optim.tau_base": 0.0}


def numpy_rankme(z):
  """RankMe as its paper defines it: exp of the entropy of the singular values over their sum."""
  s = np.linalg.svd(np.asarray(z, np.float64), compute_uv=False)
  p = s / s.sum() + 1e-7
  return float(np.exp(-np.sum(p * np.log(p))))


@pytest.mark.parametrize("rank", [1, 3, 12])
def test_effective_rank_over_devices_matches_numpy_svd(rank):
  rng = np.random.default_rng(rank)
  z = rng.normal(size=(64, rank)) @ rng.normal(size=(rank, 12)) * rng.uniform(0.1, 3, size=12)
  z = (z + 0.01 * rng.normal(size=z.shape)).astype(np.float32)
  got = jax.pmap(lambda x: collapse.effective_rank(x, parallel.AXIS), axis_name=parallel.AXIS)(
    parallel.shard(z)
  )
  np.testing.assert_allclose(np.asarray(got), numpy_rankme(z), rtol=2e-3)
  assert float(collapse.effective_rank(z)) == pytest.approx(numpy_rankme(z), rel=2e-3)


def test_alarm_fires_once_after_its_patience_and_stops_when_asked():
  healthy = {"projection_std": 0.2, "effective_rank": 10.0}  # spread 0.8 at d = 16
  narrow = {"projection_std": 0.05, "effective_rank": 10.0}  # spread 0.2
  flat = {"projection_std": 0.2, "effective_rank": 1.5}  # below 2
  alarm = collapse.CollapseAlarm(projection_dim=16, max_rank=16)
  seen = [alarm.observe(step, s) for step, s in enumerate([narrow, narrow, healthy, flat, narrow])]
  assert seen == [None] * 5  # never three low log steps in a row
  message = alarm.observe(5, narrow)  # flat, narrow, narrow
  assert message.startswith("warning: the representation has collapsed by step 5: ")
  assert "projection_std 0.05 (0.2 of " in message
  assert "effective rank 10 of at most 16" in message
  assert alarm.observe(6, narrow) is None  # once
  stopping = collapse.CollapseAlarm(16, 16, stop=True)
  for step in range(2):
    assert stopping.observe(step, narrow) is None
  with pytest.raises(UserError, match=r"collapsed by step 2: projection_std 0\.05 .* rank 10"):
    stopping.observe(2, narrow)
  # The rank floor grows with the largest possible rank: 1% of it.
  wide = collapse.CollapseAlarm(16, 2048, patience=1)
  assert wide.observe(0, {"projection_std": 0.2, "effective_rank": 19.0}) is not None


def test_healthy_run_logs_the_rank_and_stays_silent(tmp_path, capsys):
  train.pretrain(tiny.tiny_config(**RUN), str(tmp_path))
  out = capsys.readouterr().out
  assert "collapsed" not in out
  logged = [r for r in read_metrics(str(tmp_path)) if "loss" in r]
  assert [r["step"] for r in logged] == [10, 20, 30, 40, 50, 60]
  assert all(4.0 < r["effective_rank"] <= 16.0 for r in logged)
  assert all(r["projection_std"] * 4 > 0.5 for r in logged)  # spread at d = 16


def test_collapsing_run_warns_once_with_the_measured_values(tmp_path, capsys):
  train.pretrain(tiny.tiny_config(**RUN, **COLLAPSING), str(tmp_path))
  lines = [line for line in capsys.readouterr().out.splitlines() if "collapsed" in line]
  assert len(lines) == 1, lines
  assert lines[0].startswith("warning: the representation has collapsed by step ")
  assert "projection_std" in lines[0]
  assert "effective rank" in lines[0]
  assert "predictor" in lines[0]  # a usual cause


def test_stop_on_collapse_exits_with_one_line_and_keeps_the_checkpoints(tmp_path, caplog):
  flags = tiny_flags(**RUN, **COLLAPSING)
  result = run_main(f"--workdir={tmp_path}", *flags, "--config.stop_on_collapse=True")
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, errors
  assert errors[0].startswith("error: Stopped: the representation has collapsed by step ")
  assert "Traceback" not in result.stderr
  directory = os.path.join(tmp_path, "checkpoints")
  ckpt = checkpointing.Checkpointer(directory)
  steps = ckpt.all_steps()
  assert steps, steps  # the saves before the stop are kept
  assert max(steps) < 60, steps  # stopped before the end
  ckpt.close()
  caplog.set_level(logging.INFO)
  encoder = byol_jax.load_encoder(str(tmp_path))  # the last checkpoint reads back whole
  # ... without Orbax's harmless warning about the item folder's metadata file.
  assert not [r for r in caplog.records if "Metadata file does not exist" in r.getMessage()]
  assert encoder.step == max(steps)
  assert encoder.weights.config.model.predictor is False
