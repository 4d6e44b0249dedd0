"""Whole-run throughput of a config with each input pipeline, beside its step alone.

  python experiments/benchmark_pipelines.py \
    --config=configs/byol_cifar10_cpu.py:/path/to/cifar10/train --steps=1200 --repeats=2

For each pipeline (``data.pipeline`` "tfdata" and "device", alternating, ``--repeats`` times) it
runs the real command line (``python -m byol_jax.main``, kNN monitor off, a fresh workdir) and
reads, from its metrics and its wall time:

* ``run_images_per_s``: the run's median logged images/s (the training loop: input pipeline,
  step, logging and checkpoints; compilation excluded, as in the console's figure);
* ``wall_images_per_s``: images trained over the process's whole wall time (start-up, data
  decoding, compilation and saving included);
* ``step_images_per_s``: the same compiled step timed alone, on one batch of that pipeline kept
  on the device (median of 30 steps after a warm-up), and ``run_fraction`` = run / step.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

PIPELINES = ("tfdata", "device")


def whole_run(config: str, pipeline: str, steps: int, workdir: str) -> dict[str, float]:
  command = [
    sys.executable,
    "-m",
    "byol_jax.main",
    f"--config={config}",
    f"--workdir={workdir}",
    f"--config.num_steps={steps}",
    "--config.eval.knn_every_steps=0",
    f"--config.data.pipeline={pipeline}",
  ]
  start = time.perf_counter()
  subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  wall = time.perf_counter() - start
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rates = [json.loads(line)["images_per_s"] for line in f][1:]
  batch = _config(config, pipeline).batch_size
  return {
    "run_images_per_s": statistics.median(rates),
    "wall_images_per_s": steps * batch / wall,
    "wall_s": wall,
  }


def _config(config: str, pipeline: str):
  from byol_jax import config_base

  c = config_base.load_config_file(config)
  c.data.pipeline = pipeline
  return c


def step_alone(config: str, pipeline: str, steps: int = 30) -> float:
  """Images/s of the config's compiled step on one of its batches, held on the device."""
  from byol_jax import byol, parallel, run_data, train

  c = _config(config, pipeline)
  source = run_data.make_source(c, c.data.train_split)
  plan = train.plan_run(c, source.num_examples)
  hp = train.hparams(c, plan)
  optimizer = byol.make_optimizer(hp)
  views = train.view_params(c)
  p_update = train.pmapped_update(c, hp, optimizer, views)
  batch = next(iter(train.pretrain_input(c, source, views, 0, 1)))
  batch = parallel.shard(batch)
  state = parallel.replicate(train.initial_state(c, optimizer))
  rng = parallel.replicate(jax.random.PRNGKey(0))
  for _ in range(3):
    state, metrics = p_update(state, batch, rng)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = p_update(state, batch, rng)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return c.batch_size / statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--steps", type=int, default=1200)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  # As byol_jax.main sets them up, before this process's first computation (the step alone).
  from byol_jax import host_memory

  settings = _config(args.config, "tfdata")
  jax.config.update("jax_default_prng_impl", settings.prng_impl)
  host_memory.configure(settings.host_memory)
  runs: dict[str, list[dict[str, float]]] = {p: [] for p in PIPELINES}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.repeats):
      for p in PIPELINES:
        runs[p].append(whole_run(args.config, p, args.steps, os.path.join(tmp, f"{p}{r}")))
        print(p, r, {k: round(v, 1) for k, v in runs[p][-1].items()}, flush=True)
  out = {"steps": args.steps, "repeats": args.repeats, "devices": jax.device_count()}
  for p in PIPELINES:
    merged = {k: float(np.median([run[k] for run in runs[p]])) for k in runs[p][0]}
    merged["step_images_per_s"] = step_alone(args.config, p)
    merged["run_fraction"] = merged["run_images_per_s"] / merged["step_images_per_s"]
    out[p] = {k: round(v, 3) for k, v in merged.items()}
    print(p, out[p], flush=True)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
