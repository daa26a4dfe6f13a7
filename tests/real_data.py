"""Small on-disk datasets in the formats real runs read, built from shapes-world scenes.

Nothing can be downloaded on test machines, so tests write their own tfds datasets, shards and
folders with these helpers. Shapes scenes keep the images meaningful: a model trained on shapes
can be evaluated on them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from vljax.data import shapes


def encode(image: np.ndarray, fmt: str = "JPEG", quality: int = 92) -> bytes:
  """uint8 [H, W, 3] -> encoded bytes (JPEG, PNG or WEBP)."""
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, fmt, **({"quality": quality} if fmt in ("JPEG", "WEBP") else {}))
  return buf.getvalue()


def shapes_pairs(n: int, image_size: int = 64, seed: int = 0, split: str = "train") -> list[dict]:
  """n examples dict(image=uint8 [H, W, 3], caption=str, objects=...) of the shapes world."""
  world = shapes.ShapesWorld(seed=seed, image_size=image_size)
  return [world.example(i, split=split) for i in range(n)]


def write_tfds(data_dir: str | os.PathLike, name: str, splits: Mapping[str, Sequence[Mapping[str, Any]]],
               features: Mapping[str, Any]) -> str:
  """Prepare a tfds dataset `name` (array_record files, no TensorFlow) under data_dir.

  `features` maps feature names to tfds.features objects; each split is a list of example
  dicts in the same keys (images as uint8 arrays, stored as PNG, or encoded bytes). Returns the builder's
  directory (data_dir/name/1.0.0), which tfds.builder_from_directory opens.
  """
  import tensorflow_datasets as tfds

  class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(dict(features)))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(examples) for split, examples in splits.items()}

    def _generate_examples(self, examples):
      for i, ex in enumerate(examples):
        # Without TensorFlow, tfds can store encoded images but not encode arrays itself.
        yield i, {k: encode(v, "PNG") if isinstance(v, np.ndarray) and v.ndim == 3 else v for k, v in ex.items()}

  tfds.disable_progress_bar()
  _Builder.name = name
  builder = _Builder(data_dir=os.fspath(data_dir), file_format="array_record")
  builder.download_and_prepare()
  return os.fspath(builder.data_dir)
