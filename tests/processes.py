"""A harness for tests that run the real command line: one process (:func:`run_main`) or several.

Each run is ``python -m byol_jax.main`` in its own subprocess, so the test process's 8 fake devices
do not interfere: the processes of a multi-process run meet through ``jax.distributed`` on
127.0.0.1 and reduce across processes with gloo collectives.
"""

import os
import re
import socket
import subprocess
import sys
import time

from tiny import REPO

TIMEOUT_S = 480
# The test suite's compilation cache on disk, shared by every command-line subprocess: the tiny
# runs of the suite compile the same programs, and a fresh process reads them back instead.
CACHE_ENV = {
  "JAX_COMPILATION_CACHE_DIR": os.path.join(REPO, ".jax_cache"),
  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
}
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


def is_gloo_report(line: str) -> bool:
  """Whether ``line`` is made of nothing but pieces of gloo's report and their numbers (or blank)."""
  rest = line
  for piece in GLOO_PIECES:
    rest = rest.replace(piece, " ")
  return re.fullmatch(r"[\d\s]*", rest) is not None


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env(num_devices: int) -> dict[str, str]:
  """The environment of one process with ``num_devices`` CPU devices."""
  out = dict(os.environ)
  # conftest asks for 8 fake devices through XLA_FLAGS, which children would inherit.
  out["XLA_FLAGS"] = " ".join(
    f for f in out.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f
  )
  out.update(
    JAX_PLATFORMS="cpu",
    JAX_NUM_CPU_DEVICES=str(num_devices),
    JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
    CUDA_VISIBLE_DEVICES="",
    TF_CPP_MIN_LOG_LEVEL="2",
    PYTHONUNBUFFERED="1",
    **CACHE_ENV,
  )
  return out


def process_flags(num_processes: int, port: int) -> list[list[str]]:
  """The ``jax.distributed`` flags of each process of one run."""
  return [
    [
      f"--coordinator_address=127.0.0.1:{port}",
      f"--num_processes={num_processes}",
      f"--process_id={i}",
      "--heartbeat_timeout_seconds=30",
    ]
    for i in range(num_processes)
  ]


class Run:
  """One ``byol_jax.main`` subprocess, its output going to files (pipes could fill and block)."""

  def __init__(self, name: str, log_dir: str, num_devices: int, args: list[str]):
    self.name = name
    self.stdout_path = os.path.join(log_dir, f"{name}.out")
    self.stderr_path = os.path.join(log_dir, f"{name}.err")
    command = [sys.executable, "-m", "byol_jax.main", *args]
    with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
      self.proc = subprocess.Popen(command, cwd=REPO, env=env(num_devices), stdout=out, stderr=err)

  @property
  def stdout(self) -> str:
    """What the run printed, without the gloo library's connection reports."""
    with open(self.stdout_path) as f:
      return "".join(line for line in f if not is_gloo_report(line))

  @property
  def stderr(self) -> str:
    with open(self.stderr_path) as f:
      return f.read()

  def report(self) -> str:
    """Return code and the end of stderr without absl's INFO lines."""
    lines = [line for line in self.stderr.splitlines(True) if not re.match(r"I\d{4} ", line)]
    tail = "".join(lines)[-3000:]
    return f"--- {self.name}: return code {self.proc.returncode}\n{tail}\n{self.stdout[-1000:]}"


def wait(runs: list[Run], timeout_s: float = TIMEOUT_S, expect_success: bool = True) -> None:
  """Waits for all runs; on a timeout (or a failure, when success is expected) kills the others
  and fails with their output."""
  deadline = time.monotonic() + timeout_s
  try:
    while any(r.proc.poll() is None for r in runs):
      failed = [r for r in runs if r.proc.returncode not in (None, 0)]
      if (failed and expect_success) or time.monotonic() > deadline:
        break
      time.sleep(0.5)
  finally:
    for r in runs:
      if r.proc.poll() is None:
        r.proc.kill()
        r.proc.wait()
  timed_out = time.monotonic() > deadline
  if timed_out or (expect_success and any(r.proc.returncode != 0 for r in runs)):
    header = f"timed out after {timeout_s} s" if timed_out else "a process failed"
    raise AssertionError(header + "\n" + "\n".join(r.report() for r in runs))


def wait_for_output(run: Run, text: str, timeout_s: float = TIMEOUT_S) -> None:
  """Waits until ``run`` has printed ``text``; fails if it exits or the time runs out first."""
  deadline = time.monotonic() + timeout_s
  while text not in run.stdout:
    if run.proc.poll() is not None or time.monotonic() > deadline:
      raise AssertionError(f"{text!r} never printed\n{run.report()}")
    time.sleep(0.2)


def run_python(*args, cwd=REPO):
  """``python *args`` in one process with 8 fake CPU devices, to completion, output captured."""
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
    JAX_PLATFORMS="cpu",
    **CACHE_ENV,
  )
  return subprocess.run(
    [sys.executable, *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )


def run_main(*args, cwd=REPO):
  """``python -m byol_jax.main *args`` in one process with 8 fake CPU devices, to completion."""
  return run_python("-m", "byol_jax.main", *args, cwd=cwd)


def assert_one_line_error(result, *fragments):
  """The run failed with exactly one ``error:`` line, holding every fragment, and no traceback."""
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr
  lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, result.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
