"""Writes a PNG grid of the paper's two augmentations: rows original | view 1 (T) | view 2 (T').

  python experiments/show_augmentations.py --out docs/augmentations.png --num 8 --size 32

Images come from ``--folder`` (``<folder>/<class>/*.jpg`` or a flat folder; default the CIFAR-10
train folder next to the repository) or, when that folder is missing, from the synthetic shapes.
``--device_colour`` applies the colour, blur and solarisation part with the JAX version instead of
the TensorFlow one, to compare the two by eye.
"""

from __future__ import annotations

import argparse
import os
import pathlib

import jax
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from byol_jax.data import augment, device_augment, pipeline, sources

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = REPO_ROOT.parent / "shared" / "data" / "cifar10" / "train"


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--folder", default=str(DEFAULT_FOLDER), help="image folder")
  parser.add_argument("--out", default=str(REPO_ROOT / "docs" / "augmentations.png"))
  parser.add_argument("--num", type=int, default=8, help="number of images (columns)")
  parser.add_argument("--size", type=int, default=32, help="side of the views in pixels")
  parser.add_argument("--scale", type=int, default=3, help="display magnification")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--device_colour", action="store_true", help="colour ops in JAX")
  return parser.parse_args()


def load_images(folder: str, num: int, size: int, seed: int) -> list[np.ndarray]:
  """``num`` uint8 images picked at random from the folder, or synthetic ones without it."""
  if os.path.isdir(folder):
    source = sources.folder_source(folder, full_check=False)
  else:
    print(f"No folder {folder}: using synthetic images.")
    source = sources.synthetic_source(max(num, 10), 10, size, seed)
  rng = np.random.default_rng(seed)
  picks = rng.choice(source.num_examples, size=min(num, source.num_examples), replace=False)
  return [source.read(tf.constant(int(i), tf.int64))["image"].numpy() for i in picks]


def make_views(
  images: list[np.ndarray], size: int, seed: int, device_colour: bool
) -> tuple[np.ndarray, np.ndarray]:
  """The two views of every image, with the pipeline's per-example seeds."""
  t, t_prime = augment.PAPER_T, augment.PAPER_T_PRIME
  pairs = [
    pipeline.two_views(
      tf.constant(image),
      pipeline.example_seed(seed, i),
      t,
      t_prime,
      size,
      colour_ops=not device_colour,
    )
    for i, image in enumerate(images)
  ]
  view1 = np.stack([p[0].numpy() for p in pairs])
  view2 = np.stack([p[1].numpy() for p in pairs])
  if device_colour:
    k1, k2 = jax.random.split(jax.random.key(seed))
    view1 = np.asarray(device_augment.colour_augment(device_augment.to_float(view1), k1, t))
    view2 = np.asarray(device_augment.colour_augment(device_augment.to_float(view2), k2, t_prime))
  return view1, view2


def grid(rows: list[list[np.ndarray]], names: list[str], cell: int, gap: int = 4) -> Image.Image:
  """Pastes float [0, 1] or uint8 images into a labelled grid, one list per row."""
  label_w = 28
  cols = max(len(r) for r in rows)
  width = label_w + cols * (cell + gap) + gap
  height = len(rows) * (cell + gap) + gap
  canvas = Image.new("RGB", (width, height), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for r, (row, name) in enumerate(zip(rows, names)):
    top = gap + r * (cell + gap)
    draw.text((4, top + cell // 2 - 5), name, fill=(0, 0, 0))
    for c, image in enumerate(row):
      if image.dtype != np.uint8:
        image = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
      tile = Image.fromarray(image).resize((cell, cell), Image.NEAREST)
      canvas.paste(tile, (label_w + gap + c * (cell + gap), top))
  return canvas


def main() -> None:
  args = parse_args()
  images = load_images(args.folder, args.num, args.size, args.seed)
  view1, view2 = make_views(images, args.size, args.seed, args.device_colour)
  # Originals keep their aspect ratio inside the square cell by centre-cropping for display.
  originals = [
    augment.centre_crop(tf.constant(im), min(im.shape[:2]), min(im.shape[:2])).numpy()
    for im in images
  ]
  cell = args.size * args.scale
  picture = grid([originals, list(view1), list(view2)], ["orig", "T", "T'"], cell)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  picture.save(args.out)
  print(f"Wrote {args.out} ({picture.width}x{picture.height}).")


if __name__ == "__main__":
  main()
