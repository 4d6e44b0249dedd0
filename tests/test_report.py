"""``mode=report``: the pictures of a real tiny run's ``metrics.jsonl`` and of its embeddings."""

import json
import os
import sys

import numpy as np
import pytest
import tiny
from matplotlib import image as mpimg
from processes import assert_one_line_error, run_main
from tiny import monitored_config, write_folder

from byol_jax import report, train
from byol_jax.errors import UserError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A tiny pretraining with the kNN monitor and the online probe: every panel has data."""
  workdir = str(tmp_path_factory.mktemp("run"))
  train.pretrain(monitored_config(num_steps=6), workdir)
  return workdir


def assert_png(path, min_pixels=100 * 100):
  assert os.path.getsize(path) > 5000, path
  pixels = mpimg.imread(path)
  assert pixels.shape[0] * pixels.shape[1] >= min_pixels
  assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_report_draws_every_panel_of_a_real_run(run, tmp_path):
  result = run_main("--config.mode=report", f"--config.checkpoint={run}", f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  names = ("loss", "schedules", "accuracy", "collapse", "throughput")
  assert f"Wrote 5 picture(s) to {tmp_path}: " in result.stdout
  for name in names:
    assert_png(tmp_path / f"{name}.png")
  # Each panel's series are the run's: e.g. the collapse panel holds both signals.
  records = tiny.read_metrics(run)
  assert {"projection_std", "effective_rank", "lr", "tau", "images_per_s"} <= set(records[0])
  assert any("knn_top1" in r and "probe_top1" in r for r in records)


def test_report_maps_the_embeddings_of_an_embed_output(run, tmp_path):
  folder = write_folder(tmp_path / "images", classes=3, per_class=5)
  embed = run_main(
    f"--config={tiny.REPO}/configs/linear_eval_cifar10.py",
    "--config.mode=embed",
    f"--config.checkpoint={run}",
    "--config.data.source=folder",
    f"--config.data.path={folder}",
    f"--workdir={tmp_path / 'embed'}",
  )
  assert embed.returncode == 0, embed.stderr[-3000:]
  for method in ("pca", "tsne"):
    out = tmp_path / method
    result = run_main(
      "--config.mode=report",
      f"--config.checkpoint={tmp_path / 'embed'}",
      f"--config.eval.map_method={method}",
      f"--workdir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "embeddings.png" in result.stdout
    assert_png(out / "embeddings.png")
  points, used = report.project_2d(
    np.load(tmp_path / "embed" / "embeddings.npz")["features"], "pca"
  )
  assert (points.shape, used) == ((15, 2), "PCA")


def test_pca_map_follows_the_direction_the_features_share():
  rng = np.random.default_rng(0)
  latent = rng.normal(size=200)
  # Three dimensions carry the latent (each standardised to the others' scale by project_2d);
  # the other three are noise: the first principal axis is the latent.
  x = np.outer(latent, [1.0, 30.0, 0.2, 0, 0, 0]) + rng.normal(size=(200, 6)) * [
    0.1,
    3,
    0.02,
    1,
    1,
    1,
  ]
  points, used = report.project_2d(x, "pca")
  assert (points.shape, used) == ((200, 2), "PCA")
  assert np.corrcoef(points[:, 0], latent)[0, 1] ** 2 > 0.95


def test_report_errors_are_one_line(tmp_path, monkeypatch):
  result = run_main("--config.mode=report", f"--config.checkpoint={tmp_path}/none", "--workdir=x")
  assert_one_line_error(result, "No metrics at", "pretraining workdir")
  assert_one_line_error(run_main("--config.mode=report", "--workdir=x"), "config.checkpoint")
  monkeypatch.setitem(sys.modules, "matplotlib", None)
  with pytest.raises(UserError, match=r'pip install -e "\.\[report\]"'):
    report.plot_curves([{"step": 1, "loss": 1.0}], str(tmp_path))


def test_report_compares_several_runs_side_by_side(run, tmp_path):
  """Two runs (the real one, and a copy of its metrics.jsonl with a collapsed spread): one PNG
  per metric either logged; a run that is not there is a one-line error."""
  other = tmp_path / "collapsed"
  other.mkdir()
  records = tiny.read_metrics(run)
  with open(other / "metrics.jsonl", "w") as f:
    for r in records:
      if "projection_std" in r:  # (evaluation records have none)
        r = {**r, "projection_std": r["projection_std"] * 1e-4}
      f.write(json.dumps(r) + "\n")
  out = tmp_path / "out"
  result = run_main(
    "--config.mode=report", f"--config.checkpoint={run},{other}", f"--workdir={out}"
  )
  assert result.returncode == 0, result.stderr[-3000:]
  for key in ("loss", "projection_std", "effective_rank", "knn_top1", "probe_top1"):
    assert_png(out / f"compare_{key}.png")
  missing = run_main(
    "--config.mode=report", f"--config.checkpoint={run},{tmp_path / 'nothing'}", f"--workdir={out}"
  )
  assert_one_line_error(missing, "No metrics at")
