"""Batched, sharded embedding of eval images and texts through a jitted encode fn."""

from __future__ import annotations

import jax
import numpy as np

from vljax.data.pipeline import preprocess_images
from vljax.parallel.mesh import batch_shards
from vljax.parallel.sharding import batch_sharding


class Embedder:
  """Runs `encode_fn(params, image=..., text=...)` over large arrays in fixed-size chunks."""

  def __init__(self, encode_fn, mesh, chunk: int):
    self.encode_fn, self.mesh = encode_fn, mesh
    shards = batch_shards(mesh)
    self.chunk = max(shards, chunk - chunk % shards)  # a multiple of the batch shards: one compile

  def _run(self, params, key: str, out_key: str, x: np.ndarray) -> np.ndarray:
    outs = []
    for start in range(0, len(x), self.chunk):
      part = x[start:start + self.chunk]
      n = len(part)
      if n < self.chunk:  # pad the tail so every call has the same shape
        part = np.concatenate([part, np.repeat(part[-1:], self.chunk - n, axis=0)])
      part = jax.device_put(part, batch_sharding(self.mesh, part.ndim))
      outs.append(np.asarray(self.encode_fn(params, **{key: part})[out_key])[:n])
    return np.concatenate(outs)

  def images(self, params, images: np.ndarray) -> np.ndarray:
    return self._run(params, "image", "img_emb", images)

  def texts(self, params, tokens: np.ndarray) -> np.ndarray:
    return self._run(params, "text", "txt_emb", tokens)


def eval_images(examples: list[dict]) -> np.ndarray:
  """The examples' uint8 images, stacked and normalised as in training."""
  return preprocess_images(np.stack([e["image"] for e in examples]))


def normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)
