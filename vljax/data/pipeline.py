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

from vljax.data import prompts, shapes
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


FORMATS = ("caption", "lm", "vlm")


class _Collate:
  """Examples -> a batch of the data format (see `batch_ndims`); picklable for workers.

  "caption": {"image": float32[b, H, W, 3], "text": int32[b, L]} (image-caption pairs);
  "lm": {"image": zeros[b, 1, 1, 3] (unused), "text", "loss_mask"}: sequences of caption and
        question-answer chunks without images, the loss on captions and answers only;
  "vlm": {"image": float32[b, chunks, H, W, 3], "text", "loss_mask"}: the same chunks, each with
        its "<image>" and image.
  For "lm" and "vlm" each example is a list of `chunks` source examples.
  """

  def __init__(self, tokenizer: Tokenizer, max_len: int, data_format: str = "caption"):
    self.tokenizer, self.max_len, self.format = tokenizer, max_len, data_format

  def __call__(self, examples: Sequence) -> dict[str, np.ndarray]:
    if self.format == "caption":
      images = preprocess_images(np.stack([ex["image"] for ex in examples]))
      return {"image": images, "text": self.tokenizer.encode([ex["caption"] for ex in examples], self.max_len)}
    with_image = self.format == "vlm"
    chunks = [[prompts.vqa_chunk(ex["question"], ex["answer"], with_image) if "question" in ex
               else prompts.caption_chunk(ex["caption"], with_image) for ex in seq] for seq in examples]
    text, loss_mask = prompts.encode_chunks(self.tokenizer, chunks, self.max_len)
    if with_image:
      images = preprocess_images(np.stack([[ex["image"] for ex in seq] for seq in examples]))
    else:
      images = np.zeros((len(examples), 1, 1, 3), np.float32)
    return {"image": images, "text": text, "loss_mask": loss_mask}


class _Sequences:
  """Example i = source examples i*chunks ... i*chunks + chunks - 1 (random access, like the source)."""

  def __init__(self, source, chunks: int):
    self.source, self.chunks = source, chunks

  def __len__(self) -> int:
    return len(self.source) // self.chunks

  def __getitem__(self, index: int) -> list[dict]:
    return [self.source[index * self.chunks + j] for j in range(self.chunks)]


def batch_ndims(data_format: str) -> dict[str, int]:
  """Rank of each array in a batch of `data_format`: what the train step's shardings follow."""
  check_format(data_format)
  if data_format == "caption":
    return {"image": 4, "text": 2}
  return {"image": 5 if data_format == "vlm" else 4, "text": 2, "loss_mask": 2}


def check_format(data_format: str) -> None:
  if data_format not in FORMATS:
    raise ValueError(f"Unknown data.format {data_format!r}; valid: {list(FORMATS)}")


def make_train_dataset(data_cfg: Mapping[str, Any], tokenizer: Tokenizer, *, global_batch_size: int,
                       seed: int, process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """This host's infinite stream of training batches; `iter()` it and checkpoint the iterator.

  data_cfg keys: name ("shapes"), format ("caption", "lm", "vlm": see _Collate), vqa_fraction (0.5:
  the share of question-answer chunks in "lm" / "vlm"), chunks (1: chunks per "lm" / "vlm" sequence), image_size (64), max_len (24), caption_noise (0.0),
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
  data_format = data_cfg.get("format", "caption")
  check_format(data_format)
  vqa_fraction = data_cfg.get("vqa_fraction", 0.5) if data_format != "caption" else 0.0
  source = shapes.ShapesSource(world, "train", vqa_fraction=vqa_fraction, render=data_format != "lm")
  chunks = int(data_cfg.get("chunks", 1))
  if data_format != "caption":
    source = _Sequences(source, chunks)
  elif chunks != 1:
    raise ValueError(f"data.chunks={chunks}: several chunks per sequence need data.format 'lm' or 'vlm'")
  ds = grain.MapDataset.source(source)
  ds = ds[process_index::process_count]
  ds = ds.batch(local_batch, drop_remainder=True,
                batch_fn=_Collate(tokenizer, data_cfg.get("max_len", DEFAULT_MAX_LEN), data_format))
  read_options = grain.ReadOptions(num_threads=data_cfg.get("num_threads", 2),
                                   prefetch_buffer_size=data_cfg.get("prefetch", 4))
  it_ds = ds.to_iter_dataset(read_options)
  workers = data_cfg.get("workers", 0)
  if workers:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return it_ds
