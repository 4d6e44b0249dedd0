"""Trains the same tiny run in float32 and in bfloat16 compute and compares the per-step losses.

  python experiments/bf16_vs_fp32.py --steps 200

Both runs use ``configs/synthetic.py`` at tiny sizes (16 px images, the tiny ResNet, batch 16), the
same seed, data and initial parameters; only ``config.model.compute_dtype`` differs. Updates
amplify small differences, so the two trajectories drift apart slowly; the comparison of the
mean losses over the last steps shows whether bfloat16 trains as well. The last line printed is
one JSON object: ``max_abs_loss_diff``, ``mean_abs_loss_diff``, the first step's difference (the
precision error of one step from identical states), the mean loss of the last ``--tail`` steps
of each run, and the wall time of each run. For scale, a third run in float32 with another seed
(other initial parameters and data order) gives the spread of that mean from run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from byol_jax import config_base, train  # noqa: E402


def tiny_config(steps: int, compute_dtype: str, seed: int = 0):
  c = config_base.load_config_file(os.path.join(REPO, "configs", "synthetic.py"))
  c.data.synthetic_examples = 512
  c.data.image_size = 16
  c.data.eval_resize = 16
  c.model.projector_hidden = 32
  c.model.projector_output = 16
  c.model.predictor_hidden = 32
  c.model.compute_dtype = compute_dtype
  c.seed = seed
  c.batch_size = 16
  c.num_steps = steps
  c.optim.warmup_steps = steps // 10
  c.log_every_steps = 1
  c.checkpoint_every_steps = steps
  return c


def losses(workdir: str) -> np.ndarray:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return np.array([r["loss"] for r in sorted(records, key=lambda r: r["step"])])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--tail", type=int, default=50, help="steps averaged at the end")
  args = parser.parse_args()
  config = tiny_config(args.steps, "float32")
  jax.config.update("jax_default_prng_impl", config.prng_impl)
  results, seconds = {}, {}
  with tempfile.TemporaryDirectory() as root:
    for name, dtype, seed in (
      ("float32", "float32", 0),
      ("bfloat16", "bfloat16", 0),
      ("float32_seed1", "float32", 1),
    ):
      workdir = os.path.join(root, name)
      start = time.perf_counter()
      train.pretrain(tiny_config(args.steps, dtype, seed), workdir)
      seconds[name] = time.perf_counter() - start
      results[name] = losses(workdir)
  diff = np.abs(results["float32"] - results["bfloat16"])
  print(
    json.dumps(
      dict(
        backend=jax.default_backend(),
        devices=jax.device_count(),
        steps=args.steps,
        max_abs_loss_diff=round(float(diff.max()), 5),
        mean_abs_loss_diff=round(float(diff.mean()), 5),
        first_step_abs_loss_diff=round(float(diff[0]), 6),
        first_step_loss=round(float(results["float32"][0]), 5),
        **{
          f"mean_loss_last_{args.tail}_{k}": round(float(v[-args.tail :].mean()), 5)
          for k, v in results.items()
        },
        **{f"seconds_{k}": round(v, 1) for k, v in seconds.items() if k != "float32_seed1"},
      )
    )
  )


if __name__ == "__main__":
  main()
