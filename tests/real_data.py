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


def _add(tar, name: str, data: bytes) -> None:
  import tarfile

  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_tar_shards(directory: str | os.PathLike, samples: Sequence[Mapping[str, Any]], per_shard: int,
                     name: str = "shard-{:05d}.tar", fmt: str = "JPEG") -> list[str]:
  """img2dataset-style shards: per sample `KEY.jpg` (or the fmt's extension) + `KEY.txt` + `KEY.json`.

  A sample is a dict with `image` (uint8 array, or encoded bytes written as they are) and `caption`;
  optional `key`, `ext` (image extension, default from fmt), `json` (dict: written as KEY.json,
  default {"caption": caption}), `txt` (False: no KEY.txt) and `extra` (a list of (extension, bytes)
  members). Returns the shard paths.
  """
  import json
  import tarfile

  os.makedirs(directory, exist_ok=True)
  default_ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
  paths = []
  for start in range(0, len(samples), per_shard):
    path = os.path.join(os.fspath(directory), name.format(len(paths)))
    with tarfile.open(path, "w") as tar:
      for i, s in enumerate(samples[start:start + per_shard], start):
        key = s.get("key", f"{i:09d}")
        image = s.get("image")
        if image is not None:
          data = image if isinstance(image, bytes) else encode(image, fmt)
          _add(tar, f"{key}.{s.get('ext', default_ext)}", data)
        if s.get("txt", True):
          _add(tar, f"{key}.txt", str(s.get("caption", "")).encode())
        _add(tar, f"{key}.json", json.dumps(s.get("json", {"caption": s.get("caption", "")})).encode())
        for ext, data in s.get("extra", ()):
          _add(tar, f"{key}.{ext}", data)
    paths.append(path)
  return paths


def write_folder(directory: str | os.PathLike, samples: Sequence[Mapping[str, Any]], index: str = "jsonl",
                 image_key: str = "image", caption_key: str = "caption", fmt: str = "JPEG") -> str:
  """Images under directory/images/ and an index file (`captions.jsonl` or `captions.csv`) naming them.

  A sample is a dict with `image` (uint8 array or encoded bytes; None: listed but not written) and
  `caption` (a list of captions in JSONL only). Returns the index file's path.
  """
  import csv
  import json

  os.makedirs(os.path.join(directory, "images"), exist_ok=True)
  ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
  rows = []
  for i, s in enumerate(samples):
    rel = f"images/{i:06d}.{ext}"
    if s.get("image") is not None:
      with open(os.path.join(directory, rel), "wb") as f:
        f.write(s["image"] if isinstance(s["image"], bytes) else encode(s["image"], fmt))
    rows.append({image_key: rel, caption_key: s["caption"]})
  path = os.path.join(os.fspath(directory), f"captions.{index}")
  with open(path, "w", newline="", encoding="utf-8") as f:
    if index == "csv":
      writer = csv.DictWriter(f, fieldnames=[image_key, caption_key])
      writer.writeheader()
      writer.writerows(rows)
    else:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  return path


def write_array_records(directory: str | os.PathLike, samples: Sequence[Mapping[str, Any]],
                        records_per_file: int = 16, fmt: str = "JPEG") -> list[str]:
  """The `array_record` source's format (vljax.data.sources.records) from image/caption samples."""
  from vljax.data.sources import records

  return records.write_records(os.fspath(directory), [
      {"key": s.get("key", f"{i:09d}"), "caption": s["caption"],
       "image": s["image"] if isinstance(s["image"], bytes) else encode(s["image"], fmt)}
      for i, s in enumerate(samples)], records_per_file)


def word_tokenizer(path: str | os.PathLike, words: Sequence[str]) -> str:
  """A word-level tokenizer.json over `words` (id = position, words[2] the unknown word), as the
  tokenizers library writes it; returns its path."""
  import tokenizers

  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[2]))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.save(os.fspath(path))
  return os.fspath(path)
