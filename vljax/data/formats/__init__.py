"""Batch formats: how examples become the named arrays of a training batch.

A format declares the arrays it fills (name -> rank) and builds its collate function; the train
step shards exactly those arrays and hands the model the ones it reads (its `inputs`), so a
text-only format carries no placeholder image. Registering a format is one file:

  @register_format("name", fields={"image": 4, "text": 2, ...}, chunked=False, renders=True)
  def collate(settings: CollateSettings, examples: list) -> dict[str, np.ndarray]

(a module-level function: grain's worker processes pickle it, bound to its settings).

chunked: each example is a list of `data.chunks` source examples (sequences of several chunks).
renders: the format reads images (a text-only format lets the source skip rendering them).
reads_boxes: examples carry their objects' boxes and a seed (vljax/data/boxes.py): the shapes world
gives them, real sources read and check them (bad ones are skipped and counted as "bad_box").
chunk_tokens (chunked formats): (tokenizer, source example) -> (ids, targets) of its chunk as the
collate lays it out, or None when its text cannot make a chunk; real sources call it before
batching, to skip sequences that cannot fit data.max_len, and hand the ids on to the collate.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from vljax.data import images
from vljax.data.tokenizers import Tokenizer
from vljax.plugins import add_unique, import_submodules

CollateFn = Callable[["CollateSettings", Sequence[Any]], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class CollateSettings:
  """What every collate function may use: the tokenizer, the text length, the image normalisation
  preset, and the side of the canvases images are shipped in when the device resizes them
  (data.resize="device"; 0: resized on the host). shared_memory: images are built in shared memory,
  which grain's worker processes hand to the trainer without a copy (set by grain, via the collate)."""
  tokenizer: Tokenizer
  max_len: int
  normalization: str = "siglip"
  canvas: int = 0
  shared_memory: bool = False
  locca_tasks: tuple = ()  # data.locca.tasks checked: ((task, probability), ...) (vljax/data/boxes.py)


# Formats whose images may be resized on the device: one image per example, collated by image_fields.
DEVICE_RESIZE_FORMATS = ("caption", "hard_negatives")


def image_fields(settings: CollateSettings, examples: Sequence[dict]) -> dict[str, np.ndarray]:
  """The examples' images as a batch: float32 normalised, or (device resize) the uint8 canvases
  and each crop's box in its canvas."""
  n = len(examples)
  if settings.canvas:
    out = _batch_array(settings, (n, settings.canvas, settings.canvas, 3), np.uint8)
    return {"image": images.paste_canvases([ex["image"] for ex in examples], settings.canvas, out),
            images.BOX_KEY: np.stack([ex[images.BOX_KEY] for ex in examples])}
  pixels = np.stack([ex["image"] for ex in examples])
  return {"image": images.normalize(pixels, settings.normalization, _batch_array(settings, pixels.shape, np.float32))}


def _batch_array(settings: CollateSettings, shape: tuple[int, ...], dtype) -> np.ndarray | None:
  """Where a batch's images are written: shared memory in grain's workers (new, so zero-filled by the
  kernel, as paste_canvases needs), else a new array (None)."""
  if not settings.shared_memory:
    return None
  from grain.multiprocessing import SharedMemoryArray  # lazy: only worker processes need it
  return SharedMemoryArray(shape, dtype)


@dataclasses.dataclass(frozen=True)
class BatchFormat:
  name: str
  fields: Mapping[str, int]  # array name -> rank, batch axis first
  collate_fn: CollateFn
  chunked: bool = False
  renders: bool = True
  chunk_tokens: Callable[[Tokenizer, Any], Any] | None = None
  reads_boxes: bool = False

  def collate(self, settings: CollateSettings) -> Callable[[Sequence[Any]], dict[str, np.ndarray]]:
    """examples -> batch, picklable (grain's workers run it)."""
    return functools.partial(self.collate_fn, settings)


FORMATS: dict[str, BatchFormat] = {}


def register_format(name: str, *, fields: Mapping[str, int], chunked: bool = False, renders: bool = True,
                    chunk_tokens: Callable[[Tokenizer, Any], Any] | None = None, reads_boxes: bool = False):
  """Decorator registering collate(settings, examples) -> batch as batch format `name`."""
  def wrap(collate_fn: CollateFn) -> CollateFn:
    add_unique(FORMATS, "batch format", name,
               BatchFormat(name, dict(fields), collate_fn, chunked, renders, chunk_tokens, reads_boxes),
               owner=lambda f: f.collate_fn)
    return collate_fn
  return wrap


def get_format(name: str) -> BatchFormat:
  if name not in FORMATS:
    raise ValueError(f"Unknown data.format {name!r}; valid: {sorted(FORMATS)}")
  return FORMATS[name]


# Each module of this package registers its formats: a new format is a new file.
import_submodules(__name__, __path__)
