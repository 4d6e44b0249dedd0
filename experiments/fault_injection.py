"""Fault scenarios: a small pretraining run is interrupted or damaged, resumed, and checked.

Each scenario resumes the run with the same command and checks that it ends exactly like an
uninterrupted run.

  python experiments/fault_injection.py --scenario all
  python experiments/fault_injection.py --scenario damaged_truncated --workdir /tmp/faults

Every run is ``python -m byol_jax.main`` with the default synthetic config at 16 px, batch 32,
60 steps, a checkpoint every 4 steps and the last 2 kept, on 4 CPU devices in all: 1 process with
4 devices, or 2 processes with 2 each (``jax.distributed`` on 127.0.0.1, gloo collectives), so
the global batches and BatchNorm groups are the same in every run. The scenarios:

- ``kills``: SIGKILL at random moments (after 1-9 logged steps plus 0-0.3 s, so some land inside
  checkpoint writes), ``--kills`` times, restarting the same command after each.
- ``damaged_truncated``, ``damaged_missing_arrays``, ``damaged_empty``: SIGKILL after step 14's
  progress line (checkpoints 8 and 12 written); the newest checkpoint is then damaged (its
  largest array file cut to half its size; its array folder ``state/ocdbt.process_0`` removed;
  its step folder replaced by an empty one) and the run restarted. It must say so, move the
  damaged folder to ``checkpoints_damaged/<step>`` as the script left it, and resume from the
  checkpoint before it.
- ``disk_full``: the workdir on a 16 MiB tmpfs mounted here (root needed). After step 14's
  line a filler file takes all but 512 KiB, so the next checkpoint save fails with ENOSPC (the
  metrics lines still fit). The run must end with one ``error:`` line on stderr, no traceback
  and a non-zero exit, every earlier checkpoint intact; the filler is then deleted and the run
  restarted. Where mounting is refused (or with ``--disk_full_method=inject``) the children
  instead fail every Orbax save with an injected ENOSPC while a marker file exists.
- ``two_processes_one_killed``: 2 processes; SIGKILL to process 1 after step 14's line.
  Process 0 must exit within ``--heartbeat_timeout_seconds`` (default 10) plus 15 s; then both
  are restarted with the same commands.
- ``sigterm_both``: 2 processes, SIGTERM to both at the first progress line. Both must exit 0
  having saved the same step (process 0 prints ``Stopped by SIGTERM at step N``; process 1's
  Orbax log shows its last save); then both are restarted.

Every scenario also requires that each restart exits 0 (one that fails is a crash loop), prints no
traceback (a damaged checkpoint gets one warning line), and resumes from the newest checkpoint that
reads back here, and that the finished run's ``metrics.jsonl`` holds steps 1-60 once each with the
per-step losses of an uninterrupted run with as many processes (rtol 1e-6) and ends with its
parameters (rtol 1e-6, atol 1e-7). There are two such references, 1 process x 4 devices and 2 x 2:
they differ only in the order of float sums, but over 60 steps training amplifies that to loss
differences of ~1e-2 (reported as ``references.two_vs_one_process``), too much to tell a wrong
resume from. No checkpoint may be lost: one counts as lost when a run had finished writing it before
a fault (saves are synchronous and precede the next step's progress line) and it does not read back
after the fault, when a restart starts from an older step than a checkpoint that reads back, or when
a folder the script damaged is not in ``checkpoints_damaged`` afterwards.

Output: a line per scenario as it ends, then one JSON object as the last line: ``scenarios_run``,
``scenarios_passed``, ``checkpoints_lost`` and ``crash_loops`` (sums), ``max_steps_recomputed``
(steps done after the checkpoint a restart resumed from, lost to the fault), ``max_abs_param_diff``
and ``max_abs_loss_diff`` (largest over the scenarios), and ``references`` (seconds of each
reference run, null when reused, and their differences); and per scenario an object with ``passed``,
``problems`` (the checks that failed), ``exit_codes`` (of each run in order, two-process runs as
pairs), ``checkpoints_lost``, ``crash_loops``, ``steps_recomputed``, ``max_abs_loss_diff``,
``max_abs_param_diff``, ``seconds``, ``restart_tracebacks`` and ``restart_exceptions`` (of the
restarted runs), and its own figures: ``kills``, ``resumes_ok`` (restarts that continued from the
newest intact checkpoint); ``damaged_step``, ``resumed_from``; ``method`` (tmpfs or
injected_enospc), ``filler_bytes``, ``error_line``, ``tracebacks`` (how many on stderr),
``exceptions`` (their exception lines, counted); ``seconds_to_exit``, ``exit_bound_seconds``,
``process_0_said`` (its fatal line); ``stopped_at``, ``process_1_last_save``. The exit code is 1
when a scenario failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

import processes  # noqa: E402 (tests/processes.py: the multi-process environment and gloo's noise)

from byol_jax import checkpointing, config_base, train  # noqa: E402

STEPS = 60
EVERY = 4  # checkpoint interval
DEVICES = 4  # in every run: 1 process x 4 devices or 2 processes x 2
EXAMPLES = 512
OVERRIDES = [
  f"--config.num_steps={STEPS}",
  f"--config.checkpoint_every_steps={EVERY}",
  "--config.log_every_steps=1",
  "--config.keep_checkpoints=2",
  "--config.batch_size=32",
  f"--config.data.synthetic_examples={EXAMPLES}",
  "--config.data.image_size=16",
  "--config.model.projector_hidden=64",
  "--config.model.predictor_hidden=64",
]
# The damaged, disk-full and killed-peer scenarios strike after this step's progress line, when
# the checkpoints of steps 8 and 12 are written (a save precedes the next step's line).
STRIKE_STEP = 14
TIMEOUT_S = 900  # for any one run
# A resumed run repeats the uninterrupted one's arithmetic: only reordered float sums could differ.
LOSS_RTOL, PARAM_RTOL, PARAM_ATOL = 1e-6, 1e-6, 1e-7
EXIT_MARGIN_S = 15  # beyond the heartbeat timeout, for a process whose peer was killed
DISK_MB = 16
DISK_SLACK = 512 * 1024  # free bytes left by the filler: metrics lines fit, a checkpoint does not
# The children of the injected disk-full fallback: every Orbax save fails while the marker exists.
ENOSPC_SHIM = """
import errno, os
import orbax.checkpoint as ocp
marker, save = os.environ["BYOL_FAULTS_ENOSPC_MARKER"], ocp.CheckpointManager.save
def failing_save(self, *args, **kwargs):
  if os.path.exists(marker):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), marker)
  return save(self, *args, **kwargs)
ocp.CheckpointManager.save = failing_save
from byol_jax import main
main.entry_point()
"""


Scenario = Callable[["Harness", "Outcome", str], None]


class ScenarioError(Exception):
  """A run that did not behave as the scenario needs in order to go on (it hung, exited early)."""


class Run:
  """One ``byol_jax.main`` process; its output goes to files (pipes could fill and block)."""

  def __init__(
    self, h: Harness, name: str, workdir: str, devices: int, extra=(), enospc_marker: str = ""
  ):
    """``enospc_marker``: fail every checkpoint save while this file exists (see ENOSPC_SHIM)."""
    self.name = name
    self.out_path = os.path.join(h.log_dir, f"{name}.out")
    self.err_path = os.path.join(h.log_dir, f"{name}.err")
    os.makedirs(h.log_dir, exist_ok=True)
    launch = ["-c", ENOSPC_SHIM] if enospc_marker else ["-m", "byol_jax.main"]
    command = [sys.executable, *launch, f"--workdir={workdir}", *OVERRIDES, *extra]
    env = dict(processes.env(devices), JAX_COMPILATION_CACHE_DIR=h.cache_dir)
    if enospc_marker:
      env["BYOL_FAULTS_ENOSPC_MARKER"] = enospc_marker
    with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
      self.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err)
    h.live.append(self)

  @property
  def stdout(self) -> str:
    with open(self.out_path) as f:
      return "".join(line for line in f if not processes.is_gloo_report(line))

  @property
  def stderr(self) -> str:
    with open(self.err_path) as f:
      return f.read()

  def stderr_lines(self) -> list[str]:
    """stderr without absl's log lines (``I1201 22:34:30.474 ...``)."""
    with open(self.err_path) as f:
      return [line.rstrip("\n") for line in f if not re.match(r"[IWEF]\d{4} ", line)]

  def steps(self) -> list[int]:
    """The steps of this run's progress lines (process 0 prints them)."""
    return [int(m) for m in re.findall(r"^step (\d+)/", self.stdout, re.M)]

  def last_step(self) -> int:
    return max(self.steps(), default=0)

  def start_step(self) -> int | None:
    found = re.search(r"starting at step (\d+)\.", self.stdout)
    return int(found.group(1)) if found else None

  def stopped_at(self) -> int | None:
    found = re.search(r"^Stopped by .* at step (\d+); checkpoint written", self.stdout, re.M)
    return int(found.group(1)) if found else None

  def tracebacks(self) -> tuple[int, dict[str, int]]:
    """How many tracebacks stderr holds, and its exception lines (``ValueError: ...``, cut to
    160 characters) with their counts (threads' tracebacks may interleave)."""
    lines = self.stderr_lines()
    count = sum(line.startswith("Traceback (most recent call last)") for line in lines)
    exceptions: dict[str, int] = {}
    for line in lines:
      if re.match(r"[\w.]+(Error|Exception|Exit|Interrupt)\b", line):
        exceptions[line[:160]] = exceptions.get(line[:160], 0) + 1
    return count, exceptions

  def fatal_line(self) -> str | None:
    """The first fatal log line (absl's ``F1201 ...``) or ``error:`` line on stderr, cut short."""
    with open(self.err_path) as f:
      found = [line for line in f if re.match(r"F\d{4} |error:", line)]
    return found[0].strip()[:300] if found else None

  def tail(self, n: int = 6) -> str:
    return " | ".join(self.stderr_lines()[-n:] + self.stdout.splitlines()[-2:])

  def wait_for_steps(self, count: int, timeout_s: float = TIMEOUT_S) -> bool:
    """Waits until the run printed ``count`` progress lines; False if it exited first."""
    deadline = time.monotonic() + timeout_s
    while len(self.steps()) < count:
      if self.proc.poll() is not None:
        return len(self.steps()) >= count
      if time.monotonic() > deadline:
        raise ScenarioError(f"{self.name}: no progress line {count} after {timeout_s} s")
      time.sleep(0.02)
    return True

  def wait(self, timeout_s: float = TIMEOUT_S) -> int:
    try:
      return self.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
      raise ScenarioError(f"{self.name} still running after {timeout_s} s: killed") from None


@dataclasses.dataclass
class Outcome:
  """What one scenario found; ``problems`` lists every check that failed."""

  problems: list[str] = dataclasses.field(default_factory=list)
  exit_codes: list = dataclasses.field(default_factory=list)
  checkpoints_lost: int = 0
  crash_loops: int = 0
  steps_recomputed: int = 0
  max_abs_loss_diff: float | None = None
  max_abs_param_diff: float | None = None
  figures: dict = dataclasses.field(default_factory=dict)

  def check(self, ok: bool, problem: str) -> bool:
    if not ok:
      self.problems.append(problem)
    return ok

  def check_quiet_restart(self, run: Run) -> None:
    """A restarted run reports a damaged checkpoint in one warning line: counts its stderr's
    tracebacks (``restart_tracebacks``) and their exception lines (``restart_exceptions``)."""
    count, exceptions = run.tracebacks()
    self.figures["restart_tracebacks"] = self.figures.get("restart_tracebacks", 0) + count
    seen = self.figures.setdefault("restart_exceptions", {})
    for line, n in exceptions.items():
      seen[line] = seen.get(line, 0) + n
    self.check(not count, f"{run.name} printed {count} tracebacks (see restart_exceptions)")

  def entry(self, seconds: float) -> dict:
    fields = dataclasses.asdict(self)
    figures = fields.pop("figures")
    return dict(passed=not self.problems, **fields, **figures, seconds=round(seconds, 1))


@dataclasses.dataclass
class Reference:
  """An uninterrupted run: its per-step losses and final parameters."""

  workdir: str
  losses: list[tuple[int, float]]
  params: dict
  seconds: float | None  # None: one run before, reused


class Harness:
  """The scenarios' shared state: folders, the reference runs, and the processes started."""

  def __init__(self, root: str, seed: int, kills: int, heartbeat_s: int, disk_full_method: str):
    self.root = root
    self.cache_dir = os.path.join(root, "jax_cache")
    self.log_dir = os.path.join(root, "logs")
    self.rng = random.Random(seed)
    self.kills, self.heartbeat_s, self.disk_full_method = kills, heartbeat_s, disk_full_method
    self.live: list[Run] = []
    self.references: dict[bool, Reference] = {}
    config = train_config()
    optimizer = train.byol.make_optimizer(train.hparams(config, train.plan_run(config, EXAMPLES)))
    self.template = train.initial_state(config, optimizer)._asdict()

  def reference(self, two_processes: bool = False) -> Reference:
    """The uninterrupted run of 1 process x 4 devices (or 2 x 2), run on first use; one that
    finished in this workdir before is reused."""
    if two_processes not in self.references:
      name = "reference_2_processes" if two_processes else "reference"
      workdir, t0, seconds = os.path.join(self.root, name), time.time(), None
      if os.path.exists(os.path.join(workdir, "checkpoints", str(STEPS))):
        print(f"{name}: reusing {workdir}", flush=True)
      else:
        shutil.rmtree(workdir, ignore_errors=True)  # one cut short
        self.log_dir = os.path.join(self.root, "logs", name)
        runs = self.start(name, workdir, two_processes, processes.free_port())
        if any(run.wait() for run in runs) or f"on {DEVICES} device(s)" not in runs[0].stdout:
          raise ScenarioError(f"{name} failed: {runs[0].tail(20)}")
        seconds = round(time.time() - t0, 1)
        print(f"{name}: {seconds:.0f} s", flush=True)
      params = final_params(self, workdir)
      self.references[two_processes] = Reference(workdir, losses(workdir), params, seconds)
    return self.references[two_processes]

  def start(
    self, name: str, workdir: str, two_processes: bool = False, port: int = 0, enospc_marker=""
  ) -> list[Run]:
    """One run of 1 process x 4 devices, or 2 processes x 2 (a list either way)."""
    if not two_processes:
      return [Run(self, name, workdir, DEVICES, enospc_marker=enospc_marker)]
    return [
      Run(self, f"{name}_p{i}", workdir, DEVICES // 2, [*flags[:3], self.heartbeat_flag()])
      for i, flags in enumerate(processes.process_flags(2, port))
    ]

  def heartbeat_flag(self) -> str:
    return f"--heartbeat_timeout_seconds={self.heartbeat_s}"

  def stop_all(self) -> None:
    """Kills the runs this script started that are still alive (after a failed scenario)."""
    for run in self.live:
      if run.proc.poll() is None:
        run.proc.kill()
        run.proc.wait()
    self.live.clear()


def drop_closed_loop_reports(unraisable) -> None:
  """An unraisable-exception hook: Orbax's failed restores (of the damaged checkpoints read
  here) leave TensorStore reads that report to its closed event loop, each one a traceback."""
  value = unraisable.exc_value
  if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
    sys.__unraisablehook__(unraisable)


def train_config():
  """The config the runs use (the default config file with the same overrides)."""
  config = config_base.load_config_file(os.path.join(REPO, "configs", "synthetic.py"))
  return config_base.set_fields(
    config, dict(flag.removeprefix("--config.").split("=", 1) for flag in OVERRIDES)
  )


def losses(workdir: str) -> list[tuple[int, float]]:
  """(step, loss) of every record of ``metrics.jsonl``, in file order."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [(r["step"], r["loss"]) for r in records if "loss" in r]


def committed_steps(workdir: str) -> list[int]:
  root = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []


def intact_steps(h: Harness, workdir: str) -> list[int]:
  """The step folders that restore completely here (read only: nothing is moved or written)."""
  steps = committed_steps(workdir)
  if not steps:
    return []
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  intact = []
  try:
    for step in steps:
      try:
        ckpt.restore(h.template, step)
        intact.append(step)
      except Exception:  # any failure to read back is damage here
        pass
  finally:
    ckpt.close()
  return intact


def final_params(h: Harness, workdir: str) -> dict:
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    return ckpt.restore(h.template, STEPS)
  finally:
    ckpt.close()


def newest_complete(run: Run) -> int:
  """The newest checkpoint that ``run`` (process 0 of it) had certainly finished writing: saves
  are synchronous and come before the next step's progress line; a signal's stop writes one."""
  start, reached = run.start_step() or 0, run.last_step()
  saved = [s for s in range(start + 1, reached) if s % EVERY == 0]
  return max([start, *saved, run.stopped_at() or 0])


def after_fault(h: Harness, out: Outcome, workdir: str, run: Run) -> list[int]:
  """Counts the newest checkpoint finished before the fault as lost unless it still reads back;
  returns the steps that read back."""
  intact, complete = intact_steps(h, workdir), newest_complete(run)
  if complete and complete not in intact:
    out.checkpoints_lost += 1
    out.problems.append(f"checkpoint {complete}, written before the fault, is gone or unreadable")
  return intact


def restart(
  h: Harness, out: Outcome, workdir: str, name: str, reached: int, **start_args
) -> tuple[list[Run], bool]:
  """Restarts a faulted run with the same command(s): checks that it resumes from the newest
  checkpoint that reads back, and counts the steps it must recompute. Returns the runs, still
  going, and whether it resumed from that checkpoint."""
  intact = intact_steps(h, workdir)
  runs = h.start(name, workdir, **start_args)
  deadline = time.monotonic() + TIMEOUT_S
  while runs[0].start_step() is None and runs[0].proc.poll() is None:
    if time.monotonic() > deadline:
      raise ScenarioError(f"{name}: never printed its start step")
    time.sleep(0.05)
  start = runs[0].start_step()
  if start is None:  # it ended before starting to train: finish() reports the crash
    return runs, False
  newest = max(intact, default=0)
  if not out.check(start == newest, f"{name} resumed from step {start}, not {newest}"):
    out.checkpoints_lost += sum(s > start for s in intact)
  out.steps_recomputed = max(out.steps_recomputed, reached - start)
  return runs, start == newest


def finish(
  h: Harness,
  out: Outcome,
  workdir: str,
  runs: list[Run],
  two_processes: bool = False,
  restarted: bool = True,
) -> None:
  """Waits for a (restarted) run to end; checks exit 0 and the result against the reference."""
  codes = [r.wait() for r in runs]
  out.exit_codes.append(codes if two_processes else codes[0])
  for run in runs if restarted else ():
    out.check_quiet_restart(run)
  if any(codes):
    out.crash_loops += restarted
    out.problems.append(f"{runs[0].name} exited with {codes}: {runs[0].tail()}")
    return
  compare_to_reference(h, out, workdir, two_processes)


def differences(h: Harness, workdir: str, reference: Reference) -> tuple[float, float, bool]:
  """The largest absolute differences of the per-step losses and of the final parameters from
  ``reference``'s, and whether they are within LOSS_RTOL and PARAM_RTOL, PARAM_ATOL."""
  a = np.array([v for _, v in losses(workdir)])
  b = np.array([v for _, v in reference.losses])
  pairs = list(zip(jax.tree.leaves(final_params(h, workdir)), jax.tree.leaves(reference.params)))
  close = np.allclose(a, b, rtol=LOSS_RTOL, atol=0) and all(
    np.allclose(x, y, rtol=PARAM_RTOL, atol=PARAM_ATOL) for x, y in pairs
  )
  param_diff = max(float(np.max(np.abs(x - y))) for x, y in pairs)
  return float(np.max(np.abs(a - b))), param_diff, close


def compare_to_reference(h: Harness, out: Outcome, workdir: str, two_processes: bool) -> None:
  """Per-step losses and final parameters against the reference's with as many processes."""
  steps = [s for s, _ in losses(workdir)]
  if not out.check(steps == list(range(1, STEPS + 1)), f"metrics.jsonl has the steps {steps}"):
    return
  loss_diff, param_diff, close = differences(h, workdir, h.reference(two_processes))
  out.max_abs_loss_diff, out.max_abs_param_diff = loss_diff, param_diff
  out.check(close, f"losses or parameters differ: by up to {loss_diff}, {param_diff}")


def kill(run: Run) -> int:
  """SIGKILL; returns the exit code once the process is gone."""
  run.proc.kill()
  return run.wait()


# The scenarios: each gets the harness, its outcome to fill in, and its own workdir.


def scenario_kills(h: Harness, out: Outcome, workdir: str) -> None:
  """SIGKILL at random moments, ``h.kills`` times, then a run to the end."""
  runs = h.start("run_0", workdir)
  kills = resumes_ok = 0
  while kills < h.kills:
    target = h.rng.randint(1, 9)  # kill after this many logged steps, plus a random delay
    if not runs[0].wait_for_steps(target):
      break  # it ended before the kill: finish() checks how
    time.sleep(h.rng.uniform(0.0, 0.3))  # sometimes lands inside a checkpoint write
    out.exit_codes.append(kill(runs[0]))
    if kills:
      out.check_quiet_restart(runs[0])
    kills += 1
    reached = runs[0].last_step()
    after_fault(h, out, workdir, runs[0])
    runs, resumed_ok = restart(h, out, workdir, f"run_{kills}", reached)
    resumes_ok += resumed_ok
    print(f"kill {kills}: at step {reached}, resumed from {runs[0].start_step()}", flush=True)
  finish(h, out, workdir, runs, restarted=kills > 0)
  out.figures.update(kills=kills, resumes_ok=resumes_ok)


def truncate_an_array_file(step_dir: str) -> None:
  """Cut the largest array file of the newest checkpoint to half its size,"""
  state = os.path.join(step_dir, "state")
  folders = [os.path.join(state, "ocdbt.process_0", "d"), os.path.join(state, "d")]
  files = [os.path.join(d, f) for d in folders if os.path.isdir(d) for f in os.listdir(d)]
  largest = max(files, key=os.path.getsize)
  os.truncate(largest, os.path.getsize(largest) // 2)


def remove_the_array_folder(step_dir: str) -> None:
  """Remove the array folder of the newest checkpoint,"""
  shutil.rmtree(os.path.join(step_dir, "state", "ocdbt.process_0"))


def empty_the_step_folder(step_dir: str) -> None:
  """Replace the newest checkpoint's step folder by an empty one,"""
  shutil.rmtree(step_dir)
  os.mkdir(step_dir)


def listing(folder: str) -> list[tuple[str, int]]:
  """(relative path, size) of everything under ``folder`` (-1 for folders), sorted."""
  out = []
  for parent, dirs, files in os.walk(folder):
    for name in dirs + files:
      path = os.path.join(parent, name)
      out.append((os.path.relpath(path, folder), -1 if name in dirs else os.path.getsize(path)))
  return sorted(out)


def damaged_scenario(damage: Callable[[str], None]) -> Scenario:
  """A scenario: SIGKILL once two checkpoints exist, ``damage`` the newest, resume to the end."""

  def scenario(h: Harness, out: Outcome, workdir: str) -> None:
    run = h.start("run", workdir)[0]
    if not run.wait_for_steps(STRIKE_STEP):
      raise ScenarioError(f"run ended before step {STRIKE_STEP}: {run.tail()}")
    out.exit_codes.append(kill(run))
    intact = after_fault(h, out, workdir, run)
    if not out.check(len(intact) >= 2, f"two intact checkpoints expected, found {intact}"):
      return
    newest = max(committed_steps(workdir))
    step_dir = os.path.join(workdir, "checkpoints", str(newest))
    damage(step_dir)
    damaged_files = listing(step_dir)
    out.check(newest not in intact_steps(h, workdir), f"checkpoint {newest} still reads back")
    runs, _ = restart(h, out, workdir, "resumed", run.last_step())
    finish(h, out, workdir, runs)
    moved = os.path.join(workdir, "checkpoints_damaged", str(newest))
    if not os.path.isdir(moved) or listing(moved) != damaged_files:
      out.checkpoints_lost += 1
      out.problems.append(f"the damaged checkpoint {newest} is not in {moved} as it was left")
    warning = f"warning: checkpoint {newest} is damaged"
    out.check(warning in runs[0].stdout, f"no line {warning!r}")
    out.figures.update(damaged_step=newest, resumed_from=runs[0].start_step())

  scenario.__doc__ = f"{damage.__doc__} then resume to the end."
  return scenario


def mount_tmpfs(path: str) -> bool:
  os.makedirs(path, exist_ok=True)
  command = ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", path]
  return subprocess.run(command, capture_output=True, check=False).returncode == 0


def fill_disk(path: str, leave: int) -> int:
  """Writes zeros to ``path`` until its filesystem has ``leave`` bytes free; returns the size."""
  stat = os.statvfs(os.path.dirname(path))
  size, written = stat.f_bavail * stat.f_frsize - leave, 0
  chunk = b"\0" * (1 << 20)
  with open(path, "wb") as f:
    try:
      while written < size:
        written += f.write(chunk[: min(len(chunk), size - written)])
      f.flush()
    except OSError as e:  # the run wrote meanwhile: the disk is full all the same
      if e.errno != errno.ENOSPC:
        raise
  return written


def scenario_disk_full(h: Harness, out: Outcome, workdir: str) -> None:
  """A checkpoint save on a full disk: one error line, earlier checkpoints intact, resumable."""
  mount = os.path.join(h.root, "disk_full_fs")
  mounted = h.disk_full_method == "tmpfs" and mount_tmpfs(mount)
  try:
    if mounted:
      workdir, filler, marker = os.path.join(mount, "run"), os.path.join(mount, "filler"), ""
    else:  # injected ENOSPC: the "filler" is the marker file that makes every save fail
      filler = marker = os.path.join(h.root, "enospc_marker")
    out.figures["method"] = "tmpfs" if mounted else "injected_enospc"
    run = h.start("run", workdir, enospc_marker=marker)[0]
    if not run.wait_for_steps(STRIKE_STEP):
      raise ScenarioError(f"run ended before step {STRIKE_STEP}: {run.tail()}")
    written_before = committed_steps(workdir)
    if mounted:
      out.figures["filler_bytes"] = fill_disk(filler, DISK_SLACK)
    else:
      open(filler, "w").close()
    code = run.wait()
    out.exit_codes.append(code)
    errors = [line for line in run.stderr_lines() if line.startswith("error:")]
    out.figures["error_line"] = errors[0][:300] if errors else None
    out.check(code != 0, "the run went on to the end on a full disk")
    out.check(len(errors) == 1, f"{len(errors)} error lines: {run.tail()}")
    count, exceptions = run.tracebacks()
    out.figures.update(tracebacks=count, exceptions=exceptions)
    out.check(not count, f"{count} tracebacks on stderr (exceptions under 'exceptions')")
    os.remove(filler)  # space freed: what reads back now is what the fault left
    intact = after_fault(h, out, workdir, run)
    missing = sorted(set(written_before) - set(intact))
    if missing:
      out.checkpoints_lost += len(missing)
      out.problems.append(f"checkpoints {missing}, written before the disk filled, are unreadable")
    runs, _ = restart(h, out, workdir, "resumed", run.last_step(), enospc_marker=marker)
    finish(h, out, workdir, runs)
  finally:
    h.stop_all()
    if mounted:
      subprocess.run(["umount", mount], check=False)


def scenario_two_processes_one_killed(h: Harness, out: Outcome, workdir: str) -> None:
  """SIGKILL to process 1 of 2: process 0 exits within the heartbeat bound; both restart."""
  port = processes.free_port()
  runs = h.start("run", workdir, two_processes=True, port=port)
  if not runs[0].wait_for_steps(STRIKE_STEP):
    raise ScenarioError(f"process 0 ended before step {STRIKE_STEP}: {runs[0].tail()}")
  runs[1].proc.kill()
  killed_at = time.monotonic()
  bound = h.heartbeat_s + EXIT_MARGIN_S
  try:
    runs[0].proc.wait(bound + 60)  # past that, a hang: it shows as a time above the bound
  except subprocess.TimeoutExpired:
    runs[0].proc.kill()
  seconds = time.monotonic() - killed_at
  out.exit_codes.append([runs[0].proc.wait(), runs[1].proc.wait()])
  out.figures.update(
    seconds_to_exit=round(seconds, 1),
    exit_bound_seconds=bound,
    process_0_said=runs[0].fatal_line(),
  )
  out.check(seconds <= bound, f"process 0 exited {seconds:.1f} s after its peer was killed")
  after_fault(h, out, workdir, runs[0])
  args = dict(two_processes=True, port=port)
  restarted, _ = restart(h, out, workdir, "restarted", runs[0].last_step(), **args)
  finish(h, out, workdir, restarted, two_processes=True)


def scenario_sigterm_both(h: Harness, out: Outcome, workdir: str) -> None:
  """SIGTERM to both of 2 processes: both exit 0 at the same step with a checkpoint."""
  port = processes.free_port()
  runs = h.start("run", workdir, two_processes=True, port=port)
  if not runs[0].wait_for_steps(1):
    raise ScenarioError(f"process 0 ended before its first step: {runs[0].tail()}")
  for run in runs:
    run.proc.send_signal(signal.SIGTERM)
  codes = [run.wait() for run in runs]
  out.exit_codes.append(codes)
  stopped = runs[0].stopped_at()
  out.figures["stopped_at"] = stopped
  out.check(codes == [0, 0], f"exit codes {codes}: {runs[0].tail()} / {runs[1].tail()}")
  if not out.check(stopped is not None, f"no 'Stopped by SIGTERM at step N': {runs[0].tail()}"):
    return
  # Saves are collective (a process saving another step than its peer would hang), so exit 0
  # with checkpoint N intact means both stopped at N; Orbax's log on process 1 shows it too.
  saves = re.findall(r"\[process=1\].*\[step=(\d+)\] Finished synchronous save", runs[1].stderr)
  out.figures["process_1_last_save"] = int(saves[-1]) if saves else None
  out.check(not saves or int(saves[-1]) == stopped, f"process 1 last saved step {saves[-1:]}")
  after_fault(h, out, workdir, runs[0])
  args = dict(two_processes=True, port=port)
  restarted, _ = restart(h, out, workdir, "restarted", runs[0].last_step(), **args)
  finish(h, out, workdir, restarted, two_processes=True)


SCENARIOS = {
  "kills": scenario_kills,
  "damaged_truncated": damaged_scenario(truncate_an_array_file),
  "damaged_missing_arrays": damaged_scenario(remove_the_array_folder),
  "damaged_empty": damaged_scenario(empty_the_step_folder),
  "disk_full": scenario_disk_full,
  "two_processes_one_killed": scenario_two_processes_one_killed,
  "sigterm_both": scenario_sigterm_both,
}


TWO_PROCESS_SCENARIOS = {"two_processes_one_killed", "sigterm_both"}


def run_scenario(h: Harness, name: str) -> dict:
  """Runs one scenario in its own log folder; a run that hangs or dies early fails it."""
  t0, out = time.time(), Outcome()
  h.log_dir, workdir = os.path.join(h.root, "logs", name), os.path.join(h.root, name)
  for folder in (h.log_dir, workdir):  # this script's output of an earlier invocation
    shutil.rmtree(folder, ignore_errors=True)
  os.makedirs(h.log_dir)
  try:
    SCENARIOS[name](h, out, workdir)
  except ScenarioError as e:
    out.problems.append(str(e))
  finally:
    h.stop_all()
  entry = out.entry(time.time() - t0)
  print(f"{name}: {'passed' if entry['passed'] else 'FAILED'} {json.dumps(entry)}", flush=True)
  return entry


def summary(h: Harness, entries: dict[str, dict]) -> dict:
  """The last line's object: totals over the scenarios, the references, and each entry."""

  def largest(key: str) -> float | None:
    return max((e[key] for e in entries.values() if e[key] is not None), default=None)

  references = {
    ("two_processes" if two else "one_process"): dict(seconds=ref.seconds)
    for two, ref in h.references.items()
  }
  if len(h.references) == 2:  # how far apart reordered float sums drive two uninterrupted runs
    loss_diff, param_diff, _ = differences(h, h.references[True].workdir, h.references[False])
    references["two_vs_one_process"] = dict(
      max_abs_loss_diff=loss_diff, max_abs_param_diff=param_diff
    )
  return dict(
    scenarios_run=len(entries),
    scenarios_passed=sum(e["passed"] for e in entries.values()),
    checkpoints_lost=sum(e["checkpoints_lost"] for e in entries.values()),
    crash_loops=sum(e["crash_loops"] for e in entries.values()),
    max_steps_recomputed=largest("steps_recomputed"),
    max_abs_param_diff=largest("max_abs_param_diff"),
    max_abs_loss_diff=largest("max_abs_loss_diff"),
    references=references,
    **entries,
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
  parser.add_argument(
    "--workdir",
    default="",
    help="default: a new temporary folder; in an earlier one, the scenarios' folders are "
    "replaced and a finished reference run is reused",
  )
  parser.add_argument("--seed", type=int, default=0, help="of the kill moments")
  parser.add_argument("--kills", type=int, default=6, help="SIGKILLs of the kills scenario")
  parser.add_argument("--heartbeat_timeout_seconds", type=int, default=10)
  parser.add_argument(
    "--disk_full_method",
    choices=["tmpfs", "inject"],
    default="tmpfs",
    help="tmpfs (falls back to inject where mounting is refused) or an injected ENOSPC",
  )
  args = parser.parse_args()
  # Orbax's reports on the damaged checkpoints this script reads on purpose (the runs' own
  # reports are in their logs).
  sys.unraisablehook = drop_closed_loop_reports
  logging.getLogger("absl").setLevel(logging.ERROR)
  root = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="byol_faults_"))
  names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
  print(f"workdir {root}; scenarios: {', '.join(names)}", flush=True)
  h = Harness(root, args.seed, args.kills, args.heartbeat_timeout_seconds, args.disk_full_method)
  try:
    h.reference()
    if TWO_PROCESS_SCENARIOS & set(names):
      h.reference(two_processes=True)
    entries = {name: run_scenario(h, name) for name in names}
  except ScenarioError as e:  # a reference run failed: nothing to compare with
    sys.exit(f"error: {e}")
  finally:
    h.stop_all()
  result = summary(h, entries)
  print(json.dumps(result), flush=True)
  sys.exit(0 if result["scenarios_passed"] == len(entries) else 1)


if __name__ == "__main__":
  main()
