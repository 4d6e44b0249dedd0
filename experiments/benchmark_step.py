"""Times the compiled BYOL update step alone and reports images/s, FLOPs and % of a matmul peak.

  python experiments/benchmark_step.py                      # the standard CPU workload
  python experiments/benchmark_step.py --vs_pytorch         # ... beside byol-pytorch
  python experiments/benchmark_step.py --config=configs/byol_r50.py --image_size=224 --batch=128

The standard workload: ResNet-18 (ImageNet stem), two views of 64x64, batch 64, projector and
predictor 4096 -> 256, fp32, LARS. Views are synthetic and already augmented, so only the step is
timed (the input pipeline has its own benchmark). Compilation and a warm-up step are excluded;
the figure is the median of ``--steps`` steps. FLOPs per step come from XLA's cost analysis of
the step (with XLA's convolutions, which count only useful work), and the matmul peak is the best
of XLA's, numpy's BLAS and (with ``--vs_pytorch``) torch's fp32 2048x2048 matmul, measured in the
same run, so the percentage compares like with like. On a GPU or TPU the peak is XLA's 8192x8192
matmul in the step's compute dtype (bfloat16 by default there). The step imports no TensorFlow:
an accelerator host needs only JAX, Haiku, optax, orbax-checkpoint, absl-py and ml-collections.
``--vs_pytorch`` then times lucidrains' byol-pytorch on the same workload
(experiments/byol_pytorch_step.py; torch, torchvision and byol-pytorch are optional extras, in
this interpreter or in ``--pytorch_python``), twice under glibc: as installed, and with glibc's
malloc set as ``config.host_memory`` sets it for byol_jax (``GLIBC_TUNABLES``), so the ratio is
also given like for like. The last line printed is one JSON object; its
``executed_gflop_per_step`` is XLA's count for the compiled step as run, which on GPUs leaves
out the convolutions handed to cuDNN (``gflop_per_step`` is the figure behind the rates), and
``page_faults_per_step`` the process's minor page faults per timed step
(``--set host_memory=off`` shows the C library's default behaviour).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from byol_jax import byol, config_base, cpu_ops, host_memory, parallel, train  # noqa: E402


def load_config(path: str):
  return config_base.load_config_file(os.path.join(REPO, path))


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


def matmul_gflops(dtype=jnp.float32, repeats: int = 10) -> dict[str, float]:
  """Achieved GFLOP/s of a square matmul through XLA, and on CPU through numpy's BLAS (medians).

  On CPU the matmul is fp32 2048 x 2048; on an accelerator it is 8192 x 8192 in ``dtype`` (the
  step's compute dtype), large enough to fill the chip's matrix units.
  """
  on_cpu = jax.default_backend() == "cpu"
  n = 2048 if on_cpu else 8192
  a = np.random.default_rng(0).normal(size=(n, n)).astype(np.float32)
  a_dev = jnp.asarray(a, jnp.float32 if on_cpu else dtype)  # bf16 is emulated on CPUs
  f = jax.jit(lambda x: x @ x)
  runs = dict(xla=lambda: f(a_dev).block_until_ready())
  if on_cpu:
    runs["numpy"] = lambda: a @ a
  result = {}
  for name, run in runs.items():
    run()
    times = []
    for _ in range(repeats):
      t = time.perf_counter()
      run()
      times.append(time.perf_counter() - t)
    result[name] = 2 * n**3 / statistics.median(times) / 1e9
  return result


def build_step(config, devices):
  """The pmapped update step of ``config`` and its inputs (state, views, rng)."""
  plan = train.RunPlan(total_steps=10_000, warmup_steps=100, steps_per_epoch=1000, num_examples=0)
  hp = train.hparams(config, plan)
  optimizer = byol.make_optimizer(hp)
  view1, view2 = train.view_params(config)
  update = byol.make_update_fn(
    train.build_network(config, parallel.AXIS),
    optimizer,
    hp,
    axis_name=parallel.AXIS,
    device_colour_ops=None if config.data.host_colour_ops else (view1, view2),
  )
  p_update = jax.pmap(update, axis_name=parallel.AXIS, donate_argnums=(0,), devices=devices)
  state = parallel.replicate(train.initial_state(config, optimizer), devices)
  rng = parallel.replicate(jax.random.PRNGKey(0), devices)
  size, batch = config.data.image_size, config.batch_size
  views = np.random.default_rng(0).uniform(size=(2, batch, size, size, 3)).astype(np.float32)
  sharded = parallel.shard({"view1": views[0], "view2": views[1]}, devices)
  return p_update, (state, sharded, rng)


# byol-pytorch under glibc's malloc with the settings byol_jax's host memory policy makes
# (torch allocates on the calling thread, so no dispatch change is needed).
RETAINED_MEMORY_ENV = {"GLIBC_TUNABLES": host_memory.GLIBC_TUNABLES}


def run_pytorch(
  python: str, image_size: int, batch: int, steps: int, config, env: dict[str, str] | None = None
) -> dict:
  """byol-pytorch on the same workload, in a subprocess of ``python`` (after the JAX timing)."""
  script = os.path.join(REPO, "experiments", "byol_pytorch_step.py")
  cmd = [python, script, f"--image_size={image_size}", f"--batch={batch}", f"--steps={steps}"]
  cmd += [f"--hidden={config.model.projector_hidden}", f"--output={config.model.projector_output}"]
  done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
  if done.returncode != 0:
    sys.exit(
      f"byol-pytorch run failed ({' '.join(cmd)}): {done.stderr.strip().splitlines()[-1:]}. "
      "Install it with `pip install torch torchvision byol-pytorch` or pass --pytorch_python."
    )
  return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="", help="config file (default: the standard workload)")
  parser.add_argument("--image_size", type=int, default=0)
  parser.add_argument("--batch", type=int, default=0)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="FIELD=VALUE",
    help="config override, e.g. --set model.conv_impl=xla (repeatable)",
  )
  parser.add_argument(
    "--vs_pytorch", action="store_true", help="also time lucidrains' byol-pytorch (same workload)"
  )
  parser.add_argument(
    "--pytorch_python",
    default=sys.executable,
    help="interpreter with torch, torchvision and byol-pytorch installed (default: this one)",
  )
  args = parser.parse_args()

  config = load_config(args.config) if args.config else standard_config()
  if args.image_size:
    config.data.image_size = args.image_size
  if args.batch:
    config.batch_size = args.batch
  config_base.set_fields(config, dict(item.partition("=")[::2] for item in args.set))
  jax.config.update("jax_default_prng_impl", config.prng_impl)
  host_memory.configure(config.host_memory)
  devices = jax.local_devices()
  size, batch = config.data.image_size, config.batch_size

  p_update, inputs = build_step(config, devices)
  t = time.perf_counter()
  compiled = p_update.lower(*inputs).compile()
  compile_s = time.perf_counter() - t
  executed = float(_cost(compiled).get("flops", float("nan"))) * len(devices)
  # The model's FLOPs are those of XLA's own convolutions on the CPU, which count only the kernel
  # taps that meet the image (the matmul formulation also multiplies zero padding, counted
  # apart), from one device's share of the batch: the GPU's cost analysis leaves out the
  # convolutions it hands to cuDNN.
  reference = config.copy_and_resolve_references()
  reference.model.conv_impl = "xla"
  reference.batch_size = batch // len(devices)
  ref_update, ref_inputs = build_step(reference, jax.devices("cpu")[:1])
  flops = float(_cost(ref_update.lower(*ref_inputs)).get("flops", "nan")) * len(devices)
  del ref_update, ref_inputs

  state, views, rng = inputs
  state, metrics = p_update(state, views, rng)  # warm-up
  jax.block_until_ready(metrics)
  times = []
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(args.steps):
    t = time.perf_counter()
    state, metrics = p_update(state, views, rng)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.steps
  step_s = statistics.median(times)
  peaks = matmul_gflops(train.compute_dtype(config))
  pytorch = retained = None
  if args.vs_pytorch:
    pytorch = run_pytorch(args.pytorch_python, size, batch, args.steps, config)
    peaks["torch"] = pytorch["matmul_gflops_per_s"]
    if host_memory.glibc() is not None:
      retained = run_pytorch(
        args.pytorch_python, size, batch, args.steps, config, RETAINED_MEMORY_ENV
      )
  peak = max(peaks.values())
  gflops = flops / step_s / 1e9
  result = dict(
    encoder=config.model.encoder,
    image_size=size,
    batch=batch,
    conv_impl=cpu_ops.resolve_conv_impl(config.model.conv_impl, devices[0].platform),
    devices=len(devices),
    platform=devices[0].platform,
    device_kind=devices[0].device_kind,
    compute_dtype=train.compute_dtype(config).name,
    jax_version=jax.__version__,
    compile_s=round(compile_s, 1),
    step_s=step_s,
    images_per_s=batch / step_s,
    gflop_per_step=flops / 1e9,
    executed_gflop_per_step=executed / 1e9,
    gflops_per_s=gflops,
    matmul_gflops_per_s=peaks,
    matmul_peak_gflops_per_s=peak,
    pct_of_matmul_peak=100 * gflops / peak,
    # The process's page faults per timed step (all threads): pages the step's buffers took anew.
    page_faults_per_step=faults,
  )
  line = (
    f"{config.model.encoder} {size}px batch {batch}: {batch / step_s:.1f} images/s, "
    f"{flops / 1e9:.1f} GFLOP/step, {gflops:.1f} GFLOP/s = {100 * gflops / peak:.1f}% of the "
    f"measured matmul peak ({peak:.1f} GFLOP/s); compile {compile_s:.0f}s"
  )
  if pytorch is not None:
    result.update(
      pytorch_images_per_s=pytorch["images_per_s"],
      pytorch_step_s=pytorch["step_s"],
      pytorch_version=pytorch["torch"],
      ratio_vs_pytorch=result["images_per_s"] / pytorch["images_per_s"],
    )
    line += (
      f"\nbyol-pytorch (torch {pytorch['torch']}): {pytorch['images_per_s']:.1f} images/s; "
      f"byol_jax / byol-pytorch = {result['ratio_vs_pytorch']:.2f}x"
    )
  if retained is not None:
    result.update(
      pytorch_retained_memory_images_per_s=retained["images_per_s"],
      ratio_vs_pytorch_retained_memory=result["images_per_s"] / retained["images_per_s"],
    )
    line += (
      f"\nbyol-pytorch with the same malloc settings ({RETAINED_MEMORY_ENV['GLIBC_TUNABLES']}): "
      f"{retained['images_per_s']:.1f} images/s; byol_jax / that = "
      f"{result['ratio_vs_pytorch_retained_memory']:.2f}x"
    )
  print(line)
  print(json.dumps(result))


def _cost(stage) -> dict:
  """XLA's cost analysis of a lowered or compiled computation, as one dict."""
  cost = stage.cost_analysis()
  return (cost[0] if isinstance(cost, list | tuple) else cost) or {}


if __name__ == "__main__":
  main()
