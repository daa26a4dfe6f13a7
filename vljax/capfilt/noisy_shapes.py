"""A "noisy web" shapes dataset with its ground truth, for scoring CapFilt's decisions.

  python -m vljax.capfilt.noisy_shapes --output DIR --num_images 1000 --noise 0.3

Writes DIR/images/NNNNNN.png (shapes-world scenes of the train split from index 2**30 on: far past
what a training run reads) and DIR/captions.jsonl, a folder-source index (`--input DIR` of
`python -m vljax.capfilt`, data.name="folder"). Each row:

  {"image": "images/000000.png", "caption": the "web" caption, "noisy": bool, "noise": KIND or "",
   "true_caption": the world's caption of the scene, "objects": [{shape, color, size, row, col}]}

With probability --noise the web caption is wrong, of a kind drawn uniformly from --kinds:
"web" (unrelated alt text: the world's caption noise), "other_scene" (another scene's caption) or
"swapped" (the true caption with one colour or shape word changed). A wrong caption is redrawn until
it describes the scene in none of the world's wordings (vljax/capfilt/scenes.py), so "noisy" is
exact. Every row is a function of (--seed, index) alone. The demonstration that scores CapFilt on it,
with its commands and numbers: vljax/capfilt/__init__.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image
from tqdm import tqdm

from vljax.capfilt import scenes
from vljax.data import shapes

KINDS = ("web", "other_scene", "swapped")
INDEX_NAME = "captions.jsonl"
START = 2**30  # the train split's index of image 0: no run trains that far
_NOISE_STREAM = 1001  # the per-image rng of the noise, apart from the world's streams
_MAX_DRAWS = 50


def _swapped(caption: str, rng: np.random.Generator) -> str:
  """The caption with one colour or shape word replaced by another of its kind."""
  words = caption.split()
  spots = [i for i, w in enumerate(words) if w in shapes.COLORS or w in shapes.SHAPES]
  i = spots[int(rng.integers(len(spots)))]
  pool = shapes.COLOR_NAMES if words[i] in shapes.COLORS else shapes.SHAPES
  words[i] = [w for w in pool if w != words[i]][int(rng.integers(len(pool) - 1))]
  if i > 0 and words[i - 1] in ("a", "an"):
    words[i - 1] = "an" if words[i][0] in "aeiou" else "a"
  return " ".join(words)


class NoisyShapes:
  """The dataset's rows: a function of (seed, index) alone."""

  def __init__(self, noise: float, kinds: tuple[str, ...] = KINDS, seed: int = 0, image_size: int = 64,
               start: int = START):
    if not 0 <= noise <= 1:
      raise ValueError(f"--noise={noise} is invalid; valid: a fraction in [0, 1]")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
      raise ValueError(f"--kinds {unknown or list(kinds)} is invalid; valid: a non-empty subset of {list(KINDS)}")
    self.noise, self.kinds, self.start = noise, tuple(kinds), start
    self.world = shapes.ShapesWorld(seed, image_size)
    self.web = shapes.ShapesWorld(seed, image_size, caption_noise=1.0)  # its captions: unrelated alt text

  def row(self, index: int) -> dict:
    """{"pixels", "caption", "noisy", "noise", "true_caption", "objects"} of image `index`."""
    ex = self.world.example(self.start + index)
    rng = np.random.default_rng([self.world.seed, _NOISE_STREAM, index])
    noisy = bool(rng.random() < self.noise)
    kind = self.kinds[int(rng.integers(len(self.kinds)))] if noisy else ""
    caption = self.wrong_caption(kind, ex, rng) if noisy else ex["caption"]
    return dict(pixels=ex["image"], caption=caption, noisy=noisy, noise=kind, true_caption=ex["caption"],
                objects=ex["objects"])

  def wrong_caption(self, kind: str, example: dict, rng: np.random.Generator) -> str:
    """A caption of `kind` that does not describe the example's scene."""
    for _ in range(_MAX_DRAWS):
      other = int(rng.integers(2**31 - 1))
      if kind == "web":
        text = self.web.example(other, render=False)["caption"]
      elif kind == "other_scene":
        text = self.world.example(other, render=False)["caption"]
      else:
        text = _swapped(example["caption"], rng)
      if not scenes.describes(text, example["objects"]):
        return text
    raise RuntimeError(f"no {kind} caption disagreeing with {example['caption']!r} in {_MAX_DRAWS} draws")


def write(output: str, num_images: int, noise: float, kinds: tuple[str, ...] = KINDS, seed: int = 0,
          image_size: int = 64, start: int = START, progress: bool = True) -> str:
  """Writes the dataset; returns the index path."""
  if num_images < 1:
    raise ValueError(f"--num_images={num_images} must be >= 1")
  data = NoisyShapes(noise, kinds, seed, image_size, start)
  index_path = os.path.join(output, INDEX_NAME)
  if os.path.exists(index_path):
    raise FileExistsError(f"--output {output!r} already holds {INDEX_NAME}; give a new directory")
  os.makedirs(os.path.join(output, "images"), exist_ok=True)
  with open(index_path + ".tmp", "w", encoding="utf-8") as f:
    for i in tqdm(range(num_images), desc="noisy shapes", unit=" images", disable=not progress):
      r = data.row(i)
      rel = f"images/{i:06d}.png"
      Image.fromarray(r.pop("pixels")).save(os.path.join(output, rel))
      f.write(json.dumps({"image": rel, **r}) + "\n")
  os.replace(index_path + ".tmp", index_path)
  return index_path


def read_truth(data_dir: str) -> dict[str, dict]:
  """image path -> its row of captions.jsonl."""
  path = os.path.join(data_dir, INDEX_NAME)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path!r} does not exist; write it with python -m vljax.capfilt.noisy_shapes")
  with open(path, encoding="utf-8") as f:
    return {r["image"]: r for r in map(json.loads, f)}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vljax.capfilt.noisy_shapes", description=__doc__.split("\n\n")[0])
  parser.add_argument("--output", required=True, help="directory for images/ and captions.jsonl")
  parser.add_argument("--num_images", type=int, default=1000)
  parser.add_argument("--noise", type=float, default=0.3, help="share of wrong web captions (0.3)")
  parser.add_argument("--kinds", default=",".join(KINDS), help=f"noise kinds, comma-separated ({','.join(KINDS)})")
  parser.add_argument("--seed", type=int, default=0, help="the shapes world's seed (0, as the recipes)")
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--no_progress", action="store_true")
  args = parser.parse_args(argv)
  kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
  try:
    path = write(args.output, args.num_images, args.noise, kinds, args.seed, args.image_size,
                 progress=not args.no_progress)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  by_kind = {k: sum(r["noise"] == k for r in rows) for k in kinds}
  print(f"written: {len(rows)} images, {sum(r['noisy'] for r in rows)} noisy captions {by_kind} -> {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
