"""Kills a small pretraining run with SIGKILL at random moments, resumes it, and checks the result.

  python experiments/fault_injection.py --kills 6 --seed 0

First an uninterrupted reference run; then the same run in another workdir, killed ``--kills``
times at random moments (some fall inside checkpoint writes) and restarted each time with the
same command. At the end it compares the per-step losses (``metrics.jsonl``) and the final
parameters with the reference. The last line printed is one JSON object with ``kills``,
``resumes_ok``, ``checkpoints_lost`` (a checkpoint that was complete before a kill but could not
be restored after it), ``max_steps_recomputed`` (steps done after the last checkpoint and lost to
a kill), ``max_abs_param_diff`` and ``max_abs_loss_diff``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from byol_jax import checkpointing, config_base, train  # noqa: E402

OVERRIDES = [
  "--config.num_steps=60",
  "--config.checkpoint_every_steps=4",
  "--config.log_every_steps=1",
  "--config.keep_checkpoints=2",
  "--config.batch_size=32",
  "--config.data.synthetic_examples=512",
  "--config.data.image_size=16",
  "--config.model.projector_hidden=64",
  "--config.model.predictor_hidden=64",
]


def command(workdir: str) -> list[str]:
  return [sys.executable, "-m", "byol_jax.main", f"--workdir={workdir}", *OVERRIDES]


def environment(cache_dir: str) -> dict[str, str]:
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir, PYTHONUNBUFFERED="1")


def losses(workdir: str) -> dict[int, float]:
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if "loss" in record:
        out[record["step"]] = record["loss"]
  return out


def committed_steps(workdir: str) -> list[int]:
  root = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(root):
    return []
  return sorted(int(d) for d in os.listdir(root) if d.isdigit())


def final_params(workdir: str, config) -> dict:
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  optimizer = train.byol.make_optimizer(train.hparams(config, train.plan_run(config, 512)))
  state = ckpt.restore(train.initial_state(config, optimizer)._asdict())
  ckpt.close()
  return state


def run_to_end(workdir: str, env: dict[str, str]) -> None:
  result = subprocess.run(
    command(workdir), cwd=REPO, env=env, capture_output=True, text=True, check=False
  )
  if result.returncode != 0:
    raise RuntimeError(f"run failed:\n{result.stderr[-3000:]}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=int, default=6)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default="", help="default: a temporary folder")
  args = parser.parse_args()
  rng = random.Random(args.seed)
  root = args.workdir or tempfile.mkdtemp(prefix="byol_faults_")
  env = environment(os.path.join(root, "jax_cache"))
  reference, faulty = os.path.join(root, "reference"), os.path.join(root, "faulty")

  t0 = time.time()
  run_to_end(reference, env)
  print(f"reference run: {time.time() - t0:.0f}s", flush=True)

  config = train_config()
  optimizer = train.byol.make_optimizer(train.hparams(config, train.plan_run(config, 512)))
  template = train.initial_state(config, optimizer)._asdict()

  def newest_intact() -> int:
    if not committed_steps(faulty):
      return 0
    ckpt = checkpointing.Checkpointer(os.path.join(faulty, "checkpoints"))
    found = ckpt.restore_latest_intact(template)
    ckpt.close()
    return found[0] if found else 0

  kills = resumes_ok = lost = 0
  recomputed = []
  resume_from = 0
  for attempt in range(args.kills + 1):
    last_run = attempt == args.kills
    proc = subprocess.Popen(
      command(faulty),
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
      text=True,
    )
    target = rng.randint(1, 9)  # kill after this many logged steps, plus a random delay
    first = reached = None
    for line in proc.stdout:
      if line.startswith("step "):
        reached = int(line.split()[1].split("/")[0])
        first = reached if first is None else first
        if not last_run and reached - first + 1 >= target:
          time.sleep(rng.uniform(0.0, 0.3))  # sometimes lands inside a checkpoint write
          proc.send_signal(signal.SIGKILL)
          break
    proc.wait()
    if attempt > 0 and first == resume_from + 1:
      resumes_ok += 1  # this restart continued right after the newest intact checkpoint
    if last_run:
      if proc.returncode != 0:
        raise RuntimeError("the final run did not finish")
      break
    kills += 1
    newest = newest_intact()
    # The newest checkpoint complete before the kill must survive it.
    if newest < resume_from:
      lost += 1
    recomputed.append(max((reached or 0) - newest, 0))
    print(f"kill {kills}: at step {reached}, resuming from checkpoint {newest}", flush=True)
    resume_from = newest

  pa, pb = final_params(reference, config), final_params(faulty, config)
  param_diff = max(
    float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb))
  )
  la, lb = losses(reference), losses(faulty)
  loss_diff = max(abs(la[k] - lb[k]) for k in la)
  assert sorted(la) == sorted(lb), "the faulty run is missing steps"
  print(
    json.dumps(
      dict(
        kills=kills,
        resumes_ok=resumes_ok,
        checkpoints_lost=lost,
        max_steps_recomputed=max(recomputed, default=0),
        checkpoint_interval=4,
        resumes=kills,
        max_abs_param_diff=param_diff,
        max_abs_loss_diff=loss_diff,
      )
    )
  )


def train_config():
  """The config the runs above used (the default config file with the same overrides)."""
  config = config_base.load_config_file(os.path.join(REPO, "configs", "synthetic.py"))
  return config_base.set_fields(
    config, dict(flag.removeprefix("--config.").split("=", 1) for flag in OVERRIDES)
  )


if __name__ == "__main__":
  main()
