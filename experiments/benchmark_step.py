"""Times the compiled BYOL update step alone and reports images/s, FLOPs and % of a matmul peak.

  python experiments/benchmark_step.py                      # the standard CPU workload
  python experiments/benchmark_step.py --config=configs/byol_r50.py --image_size=224 --batch=128

The standard workload: ResNet-18 (ImageNet stem), two views of 64x64, batch 64, projector and
predictor 4096 -> 256, fp32, LARS. Views are synthetic and already augmented, so only the step is
timed (the input pipeline has its own benchmark). Compilation and a warm-up step are excluded;
the figure is the median of ``--steps`` steps. FLOPs per step come from XLA's cost analysis of
the compiled step, and the matmul peak is measured in the same run (a large fp32 matmul), so the
percentage compares like with like. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from byol_jax import byol, parallel, train  # noqa: E402


def load_config(path: str):
  path, _, arg = path.partition(":")
  spec = importlib.util.spec_from_file_location("bench_config", os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def standard_config():
  config = load_config("configs/synthetic.py")
  config.model.encoder = "resnet18"
  config.model.small_image_stem = False
  config.model.projector_hidden = 4096
  config.model.projector_output = 256
  config.model.predictor_hidden = 4096
  config.data.image_size = 64
  config.data.host_colour_ops = True
  config.batch_size = 64
  return config


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
  """Achieved fp32 GFLOP/s of an n x n matmul on the default device (median of repeats)."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n**3 / statistics.median(times) / 1e9


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="", help="config file (default: the standard workload)")
  parser.add_argument("--image_size", type=int, default=0)
  parser.add_argument("--batch", type=int, default=0)
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args()

  config = load_config(args.config) if args.config else standard_config()
  if args.image_size:
    config.data.image_size = args.image_size
  if args.batch:
    config.batch_size = args.batch
  jax.config.update("jax_default_prng_impl", config.prng_impl)
  devices = jax.local_devices()
  plan = train.RunPlan(total_steps=10_000, warmup_steps=100, steps_per_epoch=1000, num_examples=0)
  hp = train.hparams(config, plan)
  optimizer = byol.make_optimizer(hp)
  view1, view2 = train.view_params(config)
  update = byol.make_update_fn(
    train.build_network(config, train.AXIS),
    optimizer,
    hp,
    axis_name=train.AXIS,
    device_colour_ops=None if config.data.host_colour_ops else (view1, view2),
  )
  p_update = jax.pmap(update, axis_name=train.AXIS, donate_argnums=(0,))
  state = parallel.replicate(train.initial_state(config, optimizer), devices)
  rng = parallel.replicate(jax.random.PRNGKey(0), devices)
  size, batch = config.data.image_size, config.batch_size
  views = np.random.default_rng(0).uniform(size=(2, batch, size, size, 3)).astype(np.float32)
  sharded = parallel.shard({"view1": views[0], "view2": views[1]}, devices)

  t = time.perf_counter()
  compiled = p_update.lower(state, sharded, rng).compile()
  compile_s = time.perf_counter() - t
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  flops = float(cost.get("flops", float("nan"))) * len(devices)

  state, metrics = p_update(state, sharded, rng)  # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    state, metrics = p_update(state, sharded, rng)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  step_s = statistics.median(times)
  peak = matmul_peak_gflops()
  gflops = flops / step_s / 1e9
  result = dict(
    encoder=config.model.encoder,
    image_size=size,
    batch=batch,
    devices=len(devices),
    platform=devices[0].platform,
    compile_s=round(compile_s, 1),
    step_s=step_s,
    images_per_s=batch / step_s,
    gflop_per_step=flops / 1e9,
    gflops_per_s=gflops,
    matmul_peak_gflops_per_s=peak,
    pct_of_matmul_peak=100 * gflops / peak,
  )
  print(
    f"{config.model.encoder} {size}px batch {batch}: {batch / step_s:.1f} images/s, "
    f"{flops / 1e9:.1f} GFLOP/step, {gflops:.1f} GFLOP/s = {100 * gflops / peak:.1f}% of the "
    f"measured matmul peak ({peak:.1f} GFLOP/s); compile {compile_s:.0f}s"
  )
  print(json.dumps(result))


if __name__ == "__main__":
  main()
