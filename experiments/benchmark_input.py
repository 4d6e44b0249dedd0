"""Throughput of the input pipeline next to that of the training step it feeds.

  python experiments/benchmark_input.py --sizes=32,224 --host_colour_ops=both --repeats=3

For each image size and colour-op placement it measures, in *source images* per second (each
image gives two views):

* ``host``: the tf.data pipeline alone with every augmentation on the host (decode, crop, flip,
  colour jitter, grayscale, blur, solarisation);
* ``device``: the host part without colour ops (decode, crop, flip, resize, uint8 output), the
  rate the host must sustain when the step applies the colour ops; ``..._device_serial`` is that
  pipeline followed, serially, by ``device_augment.colour_augment`` of both views jitted on the
  default JAX device;
* ``step``: the compiled BYOL update step of a config (built as ``train.pretrain`` builds it) on
  synthetic pre-augmented views, warm-up excluded, with the colour ops inside the step in the
  device mode.

32 px reads the CIFAR-10 JPEG folder (``--folder``); 224 px reads a temporary folder of larger
JPEGs (CIFAR images upscaled to about 400x350 px), deleted at exit. The last line printed is one
JSON object with every figure; ``images_per_s_32`` / ``images_per_s_224`` are those of the
default placement on this platform (``pipeline.default_host_colour_ops``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from byol_jax import byol, config_base, parallel, train  # noqa: E402
from byol_jax.data import device_augment, pipeline, sources  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--folder", default=os.path.join(REPO, "..", "shared", "data", "cifar10", "train"))
  p.add_argument("--sizes", default="32,224", help="comma-separated image sides")
  p.add_argument("--batch", type=int, default=256, help="pipeline batch (source images)")
  p.add_argument("--batches", type=int, default=0, help="batches per repeat (0: use --seconds)")
  p.add_argument("--seconds", type=float, default=8.0, help="seconds per repeat")
  p.add_argument("--warmup_batches", type=int, default=3, help="batches run before timing")
  p.add_argument("--repeats", type=int, default=3, help="timed windows; the median is reported")
  p.add_argument("--host_colour_ops", default="both", choices=("both", "true", "false"))
  p.add_argument("--large_images", type=int, default=500, help="JPEGs generated for 224 px")
  p.add_argument("--step_config_32", default=os.path.join(REPO, "configs", "synthetic.py"))
  p.add_argument("--step_config_224", default=os.path.join(REPO, "configs", "byol_r50.py"))
  p.add_argument("--step_batch_32", type=int, default=0, help="0: the config's batch size")
  p.add_argument("--step_batch_224", type=int, default=16)
  p.add_argument("--step_encoder_224", default="", help="override the 224 config's encoder")
  p.add_argument("--step_steps", type=int, default=3, help="timed steps per repeat")
  p.add_argument("--no_step", action="store_true", help="skip the training-step timing")
  p.add_argument("--no_pipeline", action="store_true", help="time only the training step")
  return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# Data.


def make_large_jpegs(folder: str, out: str, count: int, seed: int = 0) -> None:
  """Writes ``count`` JPEGs of about 400x350 px (upscaled CIFAR images plus noise) into ``out``."""
  from PIL import Image

  src = sources.folder_source(folder, full_check=False)
  rng = np.random.default_rng(seed)
  picks = rng.choice(src.num_examples, size=count, replace=False)
  for i, k in enumerate(picks):
    w, h = int(rng.integers(360, 441)), int(rng.integers(315, 386))
    with Image.open(src.paths[k]) as im:
      big = np.asarray(im.convert("RGB").resize((w, h), Image.BICUBIC), np.float32)
    # Upscaled images are unnaturally smooth; noise gives the decoder real-photo-like work.
    big = np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8)
    Image.fromarray(big).save(os.path.join(out, f"{i:04d}.jpg"), quality=90)


# --------------------------------------------------------------------------------------------
# Timing.


def timed_rate(next_batch: Callable[[], int], args: argparse.Namespace) -> list[float]:
  """Source images per second of ``repeats`` windows; ``next_batch`` returns its image count."""
  for _ in range(args.warmup_batches):
    next_batch()
  rates = []
  for _ in range(args.repeats):
    count, start = 0, time.perf_counter()
    n = 0
    while (args.batches and n < args.batches) or (
      not args.batches and time.perf_counter() - start < args.seconds
    ):
      count += next_batch()
      n += 1
    rates.append(count / (time.perf_counter() - start))
  return rates


def pipeline_iter(
  source: sources.DataSource, size: int, batch: int, host_colour_ops: bool, views
) -> Iterator[dict[str, np.ndarray]]:
  return pipeline.pretrain_batches(
    source,
    global_batch_size=batch,
    image_size=size,
    view1=views[0],
    view2=views[1],
    seed=0,
    host_colour_ops=host_colour_ops,
  )


def bench_pipeline(source, size, views, host_colour_ops, args) -> dict[str, float]:
  """Images/s of the host pipeline alone and, for device colour ops, with them on the device."""
  out = {}
  it = pipeline_iter(source, size, args.batch, host_colour_ops, views)

  def host_only() -> int:
    return len(next(it)["label"])

  rates = timed_rate(host_only, args)
  out["host_pipeline"] = statistics.median(rates)
  if not host_colour_ops:

    @jax.jit
    def colour(v1, v2, key):
      k1, k2 = jax.random.split(key)
      return (
        device_augment.colour_augment(v1, k1, views[0]),
        device_augment.colour_augment(v2, k2, views[1]),
      )

    key = jax.random.PRNGKey(0)

    def with_device() -> int:
      b = next(it)
      jax.block_until_ready(colour(b["view1"], b["view2"], key))
      return len(b["label"])

    out["with_device_colour"] = statistics.median(timed_rate(with_device, args))
  # Stop the background threads now: a live pipeline would keep filling its buffers and steal
  # the cores from the next measurement.
  it.close()
  gc.collect()
  return out


def bench_step(config_path: str, size: int, batch: int, encoder: str, host_colour_ops: bool, args):
  """Source images/s of the compiled update step on synthetic views (one device, warm-up out)."""
  config = config_base.load_config_file(config_path)
  config.data.image_size = size
  if batch:
    config.batch_size = batch
  if encoder:
    config.model.encoder = encoder
  config.data.host_colour_ops = host_colour_ops
  views = train.view_params(config)
  plan = train.RunPlan(
    total_steps=1000, warmup_steps=10, steps_per_epoch=100, num_examples=100 * config.batch_size
  )
  hp = train.hparams(config, plan)
  optimizer = byol.make_optimizer(hp)
  update = byol.make_update_fn(
    train.build_network(config, parallel.AXIS),
    optimizer,
    hp,
    axis_name=parallel.AXIS,
    device_colour_ops=None if host_colour_ops else views,
  )
  n_dev = jax.local_device_count()
  p_update = jax.pmap(update, axis_name=parallel.AXIS, donate_argnums=(0,))
  state = parallel.replicate(train.initial_state(config, optimizer))
  rng = parallel.replicate(jax.random.PRNGKey(0))
  rs = np.random.default_rng(0)
  shape = (config.batch_size, size, size, 3)
  if host_colour_ops:
    v = [rs.uniform(0, 1, shape).astype(np.float32) for _ in range(2)]
  else:
    v = [rs.integers(0, 256, shape, dtype=np.uint8) for _ in range(2)]
  batch_np = dict(view1=v[0], view2=v[1], label=np.zeros(shape[0], np.int32))
  sharded = parallel.shard(batch_np)
  state, metrics = p_update(state, sharded, rng)  # compile
  jax.block_until_ready(metrics)
  state, metrics = p_update(state, sharded, rng)  # first run after compile
  jax.block_until_ready(metrics)
  rates = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    for _ in range(args.step_steps):
      state, metrics = p_update(state, sharded, rng)
    jax.block_until_ready(metrics)
    rates.append(args.step_steps * config.batch_size / (time.perf_counter() - start))
  return dict(
    images_per_s=statistics.median(rates),
    config=os.path.relpath(config_path, REPO),
    encoder=config.model.encoder,
    batch=config.batch_size,
    devices=n_dev,
  )


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(argv)
  sizes = [int(s) for s in args.sizes.split(",") if s]
  modes = {"both": [True, False], "true": [True], "false": [False]}[args.host_colour_ops]
  platform = jax.default_backend()
  default_mode = pipeline.default_host_colour_ops(platform)
  result: dict = dict(platform=platform, cpus=os.cpu_count(), batch=args.batch)
  tmp = tempfile.mkdtemp(prefix="byol_bench_")
  try:
    for size in sizes:
      if size <= 64:
        source = sources.folder_source(args.folder, full_check=False)
        step_config, step_batch, encoder = args.step_config_32, args.step_batch_32, ""
      else:
        if not os.listdir(tmp) and not args.no_pipeline:
          t0 = time.perf_counter()
          make_large_jpegs(args.folder, tmp, args.large_images)
          print(f"Wrote {args.large_images} JPEGs in {time.perf_counter() - t0:.1f}s", flush=True)
        source = None if args.no_pipeline else sources.folder_source(tmp, full_check=False)
        step_config, step_batch, encoder = (
          args.step_config_224,
          args.step_batch_224,
          args.step_encoder_224,
        )
      config = config_base.load_config_file(step_config)
      views = train.view_params(config)
      for host in modes:
        name = "host" if host else "device"
        if not args.no_pipeline:
          r = bench_pipeline(source, size, views, host, args)
          # What the host must sustain: with device colour ops those run inside the step.
          result[f"images_per_s_{size}_{name}"] = round(r["host_pipeline"], 1)
          if not host:
            result[f"images_per_s_{size}_device_serial"] = round(r["with_device_colour"], 1)
        if not args.no_step:
          s = bench_step(step_config, size, step_batch, encoder, host, args)
          result[f"step_images_per_s_{size}_{name}"] = round(s.pop("images_per_s"), 2)
          result[f"step_{size}"] = s
        print(
          f"{size} px, colour ops on {name}: "
          + ", ".join(f"{k}={v}" for k, v in result.items() if f"_{size}_{name}" in k),
          flush=True,
        )
      chosen = "host" if default_mode else "device"
      if f"images_per_s_{size}_{chosen}" not in result:
        chosen = "device" if chosen == "host" else "host"
      result[f"images_per_s_{size}"] = result.get(f"images_per_s_{size}_{chosen}")
      result[f"mode_{size}"] = chosen
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  for size in (32, 224):
    result.setdefault(f"images_per_s_{size}", None)
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
