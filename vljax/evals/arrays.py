"""Arrays the evaluators share: eval images prepared as in training, L2-normalised rows."""

from __future__ import annotations

import numpy as np

from vljax.data import images as images_lib, naflex


def eval_images(examples: list[dict], normalization: str = "siglip") -> np.ndarray:
  """The examples' uint8 images, stacked and normalised as in training (data.normalization)."""
  pixels = np.stack([e["image"] for e in examples])
  return images_lib.normalize(pixels, normalization)


def world_images(examples: list[dict], data) -> np.ndarray:
  """eval_images of shapes-world examples for the run's data config: packed to its token budget under
  data.naflex (each example i stretched to its drawn aspect ratio, vljax/data/naflex.py)."""
  normalization = data.get("normalization", "siglip")
  cfg = naflex.settings(data)
  if cfg is None:
    return eval_images(examples, normalization)
  return naflex.eval_images(examples, normalization, cfg, seed=int(data.get("world_seed", 0)))


def normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)
