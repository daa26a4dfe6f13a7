"""grain input pipeline: render, tokenize, batch and shard examples per host.

Host `p` of `P` reads global examples `p, p + P, p + 2P, ...` of the source, so the
`s`-th batches of all hosts together hold examples `s*B ... s*B + B - 1` (B = global batch)
and no two hosts ever share one. Batches are built whole in grain's prefetch threads (or
worker processes), so rendering overlaps the training step. The iterator's state is
grain's: a batch index, so `get_state()`/`set_state()` resume bit-identically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from vljax.data import shapes
from vljax.data.tokenizers import Tokenizer

DATASETS = ("shapes",)
DEFAULT_MAX_LEN = shapes.MAX_CAPTION_WORDS + 2


def preprocess_images(images: np.ndarray) -> np.ndarray:
  """uint8 images [..., H, W, 3] -> float32 in [-1, 1]: the one place images are normalised."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"preprocess_images expects uint8 pixels, got dtype {images.dtype}.")
  return images.astype(np.float32) * np.float32(2 / 255) - np.float32(1)


def make_world(data_cfg: Mapping[str, Any], seed: int) -> shapes.ShapesWorld:
  """The shapes world a data config describes (also what evaluators should render from)."""
  name = data_cfg.get("name", "shapes")
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset name {name!r}; valid names are {list(DATASETS)}.")
  return shapes.ShapesWorld(seed=seed, image_size=data_cfg.get("image_size", 64),
                            caption_noise=data_cfg.get("caption_noise", 0.0),
                            min_objects=data_cfg.get("min_objects", 1),
                            max_objects=data_cfg.get("max_objects", 3))


class _Collate:
  """Examples -> {"image": float32[b, H, W, 3], "text": int32[b, L]}; picklable for workers."""

  def __init__(self, tokenizer: Tokenizer, max_len: int):
    self.tokenizer, self.max_len = tokenizer, max_len

  def __call__(self, examples: Sequence[dict]) -> dict[str, np.ndarray]:
    images = np.stack([ex["image"] for ex in examples])
    text = self.tokenizer.encode([ex["caption"] for ex in examples], self.max_len)
    return {"image": preprocess_images(images), "text": text}


def make_train_dataset(data_cfg: Mapping[str, Any], tokenizer: Tokenizer, *, global_batch_size: int,
                       seed: int, process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """This host's infinite stream of training batches; `iter()` it and checkpoint the iterator.

  data_cfg keys: name ("shapes"), image_size (64), max_len (24), caption_noise (0.0),
  min_objects/max_objects (1/3), num_threads (2), prefetch (4 batches), workers (0 = threads
  only; > 0 renders in that many processes).
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count}).")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                     f"process_count={process_count}.")
  local_batch = global_batch_size // process_count
  world = make_world(data_cfg, seed)
  ds = grain.MapDataset.source(shapes.ShapesSource(world, "train"))
  ds = ds[process_index::process_count]
  ds = ds.batch(local_batch, drop_remainder=True,
                batch_fn=_Collate(tokenizer, data_cfg.get("max_len", DEFAULT_MAX_LEN)))
  read_options = grain.ReadOptions(num_threads=data_cfg.get("num_threads", 2),
                                   prefetch_buffer_size=data_cfg.get("prefetch", 4))
  it_ds = ds.to_iter_dataset(read_options)
  workers = data_cfg.get("workers", 0)
  if workers:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return it_ds
