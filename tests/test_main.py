"""The command line: the default run works, and bad input gives one clear line, not a traceback."""

import os

import pytest
from processes import assert_one_line_error, run_main
from tiny import tiny_flags, write_folder


def test_default_config_runs_end_to_end(tmp_path):
  result = run_main(f"--workdir={tmp_path}", "--config.num_steps=2", "--config.log_every_steps=1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "step 2/2" in result.stdout
  assert f"Checkpoints in {tmp_path}" in result.stdout
  assert os.path.isdir(os.path.join(tmp_path, "checkpoints", "2"))


@pytest.mark.parametrize(
  ("args", "fragments"),
  [
    (["--config.model.no_such_field=1"], ["no_such_field"]),
    (["--config.model.encoder=resnet51"], ["resnet51", "resnet50"]),
    (["--config.batch_size=12"], ["not divisible by the 8 devices"]),
    (["--config.augment.view2.solarize_prob=1.5"], ["solarize_prob"]),
  ],
)
def test_bad_config_gives_one_line(tmp_path, args, fragments):
  assert_one_line_error(run_main(f"--workdir={tmp_path}", *args), *fragments)


def test_missing_tfds_dataset_gives_one_line(tmp_path):
  result = run_main(
    f"--workdir={tmp_path / 'w'}",
    "--config.data.source=tfds",
    "--config.data.name=cifar10",
    f"--config.data.data_dir={tmp_path / 'no_data'}",
  )
  assert_one_line_error(result, "cifar10")


def test_empty_image_folder_gives_one_line(tmp_path):
  (tmp_path / "images").mkdir()
  result = run_main(
    f"--workdir={tmp_path / 'w'}",
    "--config.data.source=folder",
    f"--config.data.path={tmp_path / 'images'}",
  )
  assert_one_line_error(result, str(tmp_path / "images"))


def test_console_shows_the_projects_lines_only_unless_verbose(tmp_path):
  """A short run on an image folder (TensorFlow reads it, Orbax saves twice): by default every
  console line is the project's; ``--verbosity=0`` brings the libraries' INFO lines back."""
  write_folder(tmp_path / "images", classes=2, per_class=8, size=(20, 20), ext="jpg")
  args = [
    *tiny_flags(**{"data.source": "folder", "data.path": tmp_path / "images"}),
    "--config.num_steps=4",
    "--config.log_every_steps=2",
    "--config.checkpoint_every_steps=2",
  ]
  quiet = run_main(f"--workdir={tmp_path / 'quiet'}", *args)
  assert quiet.returncode == 0, quiet.stderr[-3000:]
  lines = (quiet.stdout + quiet.stderr).splitlines()
  ours = ("BYOL pretraining: ", "step 2/4 | ", "step 4/4 | ", "Done: 4 steps.")
  assert [next((p for p in ours if line.startswith(p)), line) for line in lines] == list(ours)
  verbose = run_main(f"--workdir={tmp_path / 'verbose'}", *args, "--verbosity=0")
  assert verbose.returncode == 0, verbose.stderr[-3000:]
  assert "Saving checkpoint at step 4" in verbose.stderr
  assert len(verbose.stderr.splitlines()) > 20
