"""Times lucidrains' byol-pytorch on the standard step workload (run by benchmark_step.py).

  python experiments/byol_pytorch_step.py --image_size 64 --batch 64 --steps 20

Needs ``torch``, ``torchvision`` and ``byol-pytorch`` (``pip install byol-pytorch``), in this
interpreter or in the one passed to ``benchmark_step.py --pytorch_python``. The workload mirrors
byol_jax's step benchmark: torchvision ResNet-18, two 64x64 views that are already augmented (its
own on-device augmentation is replaced by the fixed views, as byol_jax's step benchmark also
excludes augmentation), projector and predictor 4096 -> 256, forward and backward of the online
network on both views, the target network's forward, an Adam step (its README's optimiser) and
the EMA update. The median of ``--steps`` steps after two warm-up steps. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
import torchvision
from byol_pytorch import BYOL


def matmul_gflops(n: int = 2048, repeats: int = 7) -> float:
  a = torch.randn(n, n)
  a @ a
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    a @ a
    times.append(time.perf_counter() - t)
  return 2 * n**3 / statistics.median(times) / 1e9


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--hidden", type=int, default=4096)
  parser.add_argument("--output", type=int, default=256)
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)

  rng = np.random.default_rng(0)
  shape = (args.batch, 3, args.image_size, args.image_size)
  view1 = torch.from_numpy(rng.uniform(size=shape).astype(np.float32))
  view2 = torch.from_numpy(rng.uniform(size=shape).astype(np.float32))
  learner = BYOL(
    torchvision.models.resnet18(),
    image_size=args.image_size,
    hidden_layer="avgpool",
    projection_size=args.output,
    projection_hidden_size=args.hidden,
    augment_fn=lambda x: view1,
    augment_fn2=lambda x: view2,
  )
  optimizer = torch.optim.Adam(learner.parameters(), lr=3e-4)

  def step() -> float:
    loss = learner(view1)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    learner.update_moving_average()
    return float(loss)

  for _ in range(2):
    step()
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  step_s = statistics.median(times)
  print(
    json.dumps(
      dict(
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        step_s=step_s,
        images_per_s=args.batch / step_s,
        matmul_gflops_per_s=matmul_gflops(),
      )
    )
  )


if __name__ == "__main__":
  main()
