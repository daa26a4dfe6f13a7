"""Raw record -> training example: pick a caption, decode and crop the image (in grain workers).

Every source yields raw records `{"image": encoded bytes, "caption": text | [texts] | bytes,
"key": str}` (or a skip marker, see skips.py). `Preprocess` runs as a grain `random_map`, so its
generator is derived from (seed, example index) by grain: the same example gets the same crop and
caption in every run and after every resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vljax.data import images
from vljax.data.sources import skips


def pick_caption(caption, rng: np.random.Generator | None) -> str:
  """One caption text: `rng` picks among several (None: the first); '' when there is none."""
  if isinstance(caption, (list, tuple, np.ndarray)):
    texts = [t for t in (_text(c) for c in caption) if t]
    if not texts:
      return ""
    return texts[int(rng.integers(len(texts)))] if rng is not None else texts[0]
  return _text(caption)


def _text(value) -> str:
  if value is None:
    return ""
  if isinstance(value, bytes):
    value = value.decode("utf-8", errors="replace")
  return str(value).strip()


class Preprocess:
  """random_map transform: raw record -> {"image": uint8 [S, S, 3], "caption": str} or a marker.

  train: random resized crop in `crop_scale` and a random caption; eval: resize + center crop and
  the first caption. `source` tags the output so mixtures count bad samples per source.
  """

  def __init__(self, image_size: int, train: bool, crop_scale: Sequence[float], source: int = 0):
    self.image_size, self.train, self.source = int(image_size), train, source
    self.crop_scale = tuple(float(s) for s in crop_scale)

  def __call__(self, record: dict, rng: np.random.Generator) -> dict:
    extra = {"shard_end": True} if record.get("shard_end") else {}
    if skips.is_marker(record):
      return skips.marker(record["skip"], self.source, **extra)
    caption = pick_caption(record.get("caption"), rng if self.train else None)
    if not caption:
      return skips.marker("empty_caption", self.source, **extra)
    try:
      im = images.decode_image(record["image"])
      if self.train:
        pixels = images.random_resized_crop(im, self.image_size, rng, scale=self.crop_scale)
      else:
        pixels = images.resize_center_crop(im, self.image_size)
    except images.CorruptImageError:
      return skips.marker("corrupt_image", self.source, **extra)
    return {"image": pixels, "caption": caption, "source": self.source, **extra}
