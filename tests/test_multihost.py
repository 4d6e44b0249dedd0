"""Two processes with 2 CPU devices each train exactly like one process with 4 devices.

Each run is the real command line (``python -m byol_jax.main``) in its own subprocess, so the
test process's 8 fake devices do not interfere: the two processes of the multi-process run meet
through ``jax.distributed`` on 127.0.0.1 and reduce across processes with gloo collectives; each
reads its own half of every global batch, as on a multi-host slice. The single-process run on 4
devices sees the same global batches, so losses, checkpoints and logs must agree.
"""

import os
import re
import socket
import subprocess
import sys
import time

import jax
import numpy as np
from tiny import REPO, read_metrics, tiny_config, tiny_flags

from byol_jax import checkpointing, train

STEPS = 3
# Checkpoints at steps 2 and 3; metrics at every step.
OVERRIDES = {"num_steps": STEPS, "checkpoint_every_steps": 2}
TIMEOUT_S = 480
# gloo's own connection report ("[Gloo] Rank 0 is connected to 1 peer ranks. Expected number of
# connected peer ranks is : 1"), which its C++ code prints to stdout in any process, piece by piece
# from more than one thread, so a line may hold any interleaving of its pieces.
GLOO_PIECES = (
  "[Gloo]",
  "Rank",
  "is connected to",
  "peer ranks.",
  "Expected number of connected peer ranks is",
  ":",
)


def _is_gloo_report(line: str) -> bool:
  """Whether ``line`` is made of nothing but pieces of gloo's report and their numbers (or blank)."""
  rest = line
  for piece in GLOO_PIECES:
    rest = rest.replace(piece, " ")
  return re.fullmatch(r"[\d\s]*", rest) is not None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(num_devices: int) -> dict[str, str]:
  env = dict(os.environ)
  # conftest asks for 8 fake devices through XLA_FLAGS, which children would inherit.
  env["XLA_FLAGS"] = " ".join(
    f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f
  )
  env.update(
    JAX_PLATFORMS="cpu",
    JAX_NUM_CPU_DEVICES=str(num_devices),
    JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
    CUDA_VISIBLE_DEVICES="",
    TF_CPP_MIN_LOG_LEVEL="2",
    PYTHONUNBUFFERED="1",
    # The test suite's compilation cache: a rerun skips most of the compiling.
    JAX_COMPILATION_CACHE_DIR=os.path.join(REPO, ".jax_cache"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
  )
  return env


class _Run:
  """One ``byol_jax.main`` subprocess, its output going to files (pipes could fill and block)."""

  def __init__(self, name, log_dir, workdir, num_devices, *extra):
    self.name = name
    self.stdout_path = os.path.join(log_dir, f"{name}.out")
    self.stderr_path = os.path.join(log_dir, f"{name}.err")
    command = [
      sys.executable,
      "-m",
      "byol_jax.main",
      "--config=configs/synthetic.py",
      f"--workdir={workdir}",
      *tiny_flags(**OVERRIDES),
      *extra,
    ]
    with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
      self.proc = subprocess.Popen(command, cwd=REPO, env=_env(num_devices), stdout=out, stderr=err)

  @property
  def stdout(self) -> str:
    """What the run printed, without the gloo library's connection reports."""
    with open(self.stdout_path) as f:
      return "".join(line for line in f if not _is_gloo_report(line))

  def report(self) -> str:
    """Return code and the end of stderr without absl's INFO lines."""
    with open(self.stderr_path) as f:
      lines = [line for line in f if not re.match(r"I\d{4} ", line)]
    tail = "".join(lines)[-3000:]
    return f"--- {self.name}: return code {self.proc.returncode}\n{tail}\n{self.stdout[-1000:]}"


def _wait(runs, timeout_s):
  """Waits for all runs; on a timeout or a failure, kills the others and fails with their output."""
  deadline = time.monotonic() + timeout_s
  try:
    while any(r.proc.poll() is None for r in runs):
      failed = [r for r in runs if r.proc.returncode not in (None, 0)]
      if failed or time.monotonic() > deadline:
        break
      time.sleep(0.5)
  finally:
    for r in runs:
      if r.proc.poll() is None:
        r.proc.kill()
        r.proc.wait()
  if any(r.proc.returncode != 0 for r in runs):
    timed_out = time.monotonic() > deadline
    header = f"timed out after {timeout_s} s" if timed_out else "a process failed"
    raise AssertionError(header + "\n" + "\n".join(r.report() for r in runs))


def _initial_state():
  config = tiny_config(**OVERRIDES)
  optimizer = train.byol.make_optimizer(train.hparams(config, train.plan_run(config, 64)))
  return train.initial_state(config, optimizer)._asdict()


def _final_state(workdir):
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    return ckpt.restore(_initial_state())
  finally:
    ckpt.close()


def test_two_processes_train_like_one(tmp_path):
  multi, single = str(tmp_path / "two_processes"), str(tmp_path / "one_process")
  coordinator = f"--coordinator_address=127.0.0.1:{_free_port()}"
  # One after the other: on a small machine three compiling processes at once are much slower.
  reference_run = _Run("single", str(tmp_path), single, 4)
  _wait([reference_run], TIMEOUT_S)
  runs = [
    _Run(
      f"process_{i}",
      str(tmp_path),
      multi,
      2,
      coordinator,
      "--num_processes=2",
      f"--process_id={i}",
      "--heartbeat_timeout_seconds=30",
    )
    for i in range(2)
  ]
  _wait(runs, TIMEOUT_S)
  p0, p1 = runs

  assert "on 4 device(s)" in p0.stdout
  assert "on 4 device(s)" in reference_run.stdout
  assert f"Done: {STEPS} steps" in p0.stdout
  # Only process 0 reports and writes logs; every process takes part in the checkpoints.
  assert p1.stdout == "", p1.stdout
  records = read_metrics(multi)
  assert [r["step"] for r in records] == list(range(1, STEPS + 1))
  events = os.listdir(os.path.join(multi, "tensorboard"))
  assert len([f for f in events if f.startswith("events.out.tfevents")]) == 1, events
  for workdir in (multi, single):
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3"]

  # Same global batches, BatchNorm statistics and gradient means over the same 4 devices: the
  # runs differ only in the order of float32 sums (gloo across processes).
  reference = read_metrics(single)
  for key in ("loss", "grad_norm", "projection_std"):
    np.testing.assert_allclose(
      [r[key] for r in records], [r[key] for r in reference], rtol=1e-5, err_msg=key
    )
  a, b = _final_state(multi), _final_state(single)
  assert int(a["step"]) == STEPS
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), a, b)
  # The updates changed the parameters: the comparison is not between two initial states.
  w = "projector/linear"
  assert not np.allclose(a["online_params"][w]["w"], _initial_state()["online_params"][w]["w"])
