"""Arrays the evaluators share: eval images prepared as in training, L2-normalised rows."""

from __future__ import annotations

import numpy as np

from vljax.data import images as images_lib


def eval_images(examples: list[dict], normalization: str = "siglip") -> np.ndarray:
  """The examples' uint8 images, stacked and normalised as in training (data.normalization)."""
  pixels = np.stack([e["image"] for e in examples])
  return images_lib.normalize(pixels, normalization)


def normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)
