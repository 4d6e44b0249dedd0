"""The BYOL update step's memory per device, from XLA's compiled memory analysis (nothing runs).

  python experiments/memory_analysis.py          # ResNet-50 on this machine's device
  python experiments/memory_analysis.py --encoder=resnet18 --image_size=64 --batches=32
  JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 python experiments/memory_analysis.py \
    --target=h100    # BENCHMARKS.md's table: XLA:GPU without a GPU (jax[cuda12] installed)

For each row the real update step (``train.update_step``, one
device, the config's optimiser, EMA target, online probe and device colour ops) is lowered with
abstract inputs and compiled for this machine's backend, and XLA reports the buffers it assigned:
the state and batch it reads (arguments), the state it returns (outputs, mostly aliased to the
donated arguments) and its temporaries (activations kept for the backward pass, gradients,
workspace). The peak is arguments + outputs - aliased + temporaries. XLA's convolutions are used
(``conv_impl="xla"``, the GPU/TPU path). The figures are the compiler's own buffer assignment,
and they differ between backends: XLA:CPU's schedule keeps no less for ``jax.checkpoint`` (remat
shows no saving there), XLA:GPU's does. ``--target=h100`` compiles for an NVIDIA H100 (80 GB)
without one (JAX's deviceless ahead-of-time compilation: the CUDA plugin installed, no device,
no autotuning), so the GPU table is reproducible on any machine; on a GPU machine the local
device is used without it. A second table compiles the step of a per-device batch of
``--accumulate_to`` (the paper's 4096: the whole batch on one device) as micro-batches of each of
``--batches`` (``optim.grad_accum_steps``): its peak is the smallest device memory that runs that
batch so. The last line printed is one JSON object with every row.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import jax
import jax.numpy as jnp
from jax.experimental import topologies

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from byol_jax import byol, config_base, train  # noqa: E402

GIB = 2**30
# The device description XLA:GPU compiles for with --target=h100 (an H100 SXM 80 GB's published
# limits: compute capability 9.0, 132 SMs, 50 MiB L2, 3.35 TB/s), as a GpuTargetConfig proto.
H100_TARGET = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 84929347584 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 } registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 7 }
runtime_version { major: 12 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""


def target_sharding(target: str | None):
  """Where to compile: None for this machine's first device, else a deviceless GPU's sharding."""
  if target is None:
    return None
  topology = topologies.get_topology_desc(
    platform="cuda", target_config=H100_TARGET, topology="1x1x1"
  )
  mesh = topologies.make_mesh(topology, (1,), ("devices",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def row_config(args, batch: int, normalization: str, remat: bool, dtype: str, accum: int = 1):
  config = config_base.load_config_file(os.path.join(REPO, "configs/byol_r50.py"))
  config.model.encoder = args.encoder
  config.model.normalization = normalization
  config.model.remat = remat
  config.model.compute_dtype = dtype
  config.model.conv_impl = "xla"
  config.data.image_size = args.image_size
  config.batch_size = batch * accum
  config.optim.grad_accum_steps = accum
  return config


def step_memory(config, sharding=None) -> dict[str, int]:
  """XLA's buffer sizes (bytes) for one device's update step of ``config``, compiled for the
  device of ``sharding`` (default: this machine's)."""
  plan = train.RunPlan(total_steps=1000, warmup_steps=10, steps_per_epoch=100, num_examples=1)
  hp = train.hparams(config, plan)
  optimizer = byol.make_optimizer(hp)
  network = train.build_network(config, axis_name=None)
  update = train.update_step(config, hp, optimizer, train.view_params(config), axis_name=None)
  size, n = config.data.image_size, config.batch_size
  dummy = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
  state = jax.eval_shape(
    lambda k, x: byol.init_state(network, optimizer, k, x), jax.random.key(0), dummy
  )
  image = jax.ShapeDtypeStruct((n, size, size, 3), jnp.uint8)
  batch = dict(view1=image, view2=image, label=jax.ShapeDtypeStruct((n,), jnp.int32))
  if sharding is not None:
    state, batch, key = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), (state, batch, key)
    )
  compiled = jax.jit(update, donate_argnums=0).lower(state, batch, key).compile()
  m = compiled.memory_analysis()
  sizes = dict(
    arguments=m.argument_size_in_bytes,
    outputs=m.output_size_in_bytes,
    aliased=m.alias_size_in_bytes,
    temporaries=m.temp_size_in_bytes,
  )
  sizes["peak"] = sizes["arguments"] + sizes["outputs"] - sizes["aliased"] + sizes["temporaries"]
  return sizes


def measure(args, sharding, normalization, dtype, remat, batch: int, accum: int) -> dict:
  sizes = step_memory(row_config(args, batch, normalization, remat, dtype, accum), sharding)
  row = dict(normalization=normalization, dtype=dtype, remat=remat, batch=batch * accum)
  row.update(micro_batch=batch, grad_accum_steps=accum, **sizes)
  print(
    f"{normalization:<14} {dtype:<9} {remat!s:<6} {batch * accum:>5} {accum:>5}"
    f"  {sizes['arguments'] / GIB:9.2f}  {sizes['temporaries'] / GIB:11.2f}"
    f"  {sizes['peak'] / GIB:10.2f}",
    flush=True,
  )
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--encoder", default="resnet50")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batches", default="32,64,128", help="per-device batches, no accumulation")
  parser.add_argument("--normalizations", default="batch,group_ws")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--remat", default="False,True")
  parser.add_argument(
    "--accumulate_to",
    type=int,
    default=4096,
    help="also the step of this per-device batch as micro-batches of each of --batches (0: not)",
  )
  parser.add_argument(
    "--accumulated_only", action="store_true", help="only the --accumulate_to rows"
  )
  parser.add_argument("--target", choices=["h100"], help="compile for this GPU, without one")
  args = parser.parse_args()
  sharding = target_sharding(args.target)
  device = jax.devices()[0] if sharding is None else sharding.mesh.devices.flat[0]
  batches = [int(b) for b in args.batches.split(",")]
  grid = list(
    itertools.product(
      args.normalizations.split(","),
      args.dtypes.split(","),
      [r == "True" for r in args.remat.split(",")],
    )
  )
  print(f"compiled for: {device.platform} ({device.device_kind})", flush=True)
  print(
    "normalization  dtype     remat  batch accum  arguments  temporaries  peak (GiB)", flush=True
  )
  rows = []
  if not args.accumulated_only:
    rows += [measure(args, sharding, *cell, batch, 1) for cell in grid for batch in batches]
  if args.accumulate_to:
    rows += [
      measure(args, sharding, *cell, batch, args.accumulate_to // batch)
      for cell in grid
      for batch in batches
      if args.accumulate_to % batch == 0
    ]
  print(json.dumps(dict(device=device.device_kind, encoder=args.encoder, rows=rows)))


if __name__ == "__main__":
  main()
