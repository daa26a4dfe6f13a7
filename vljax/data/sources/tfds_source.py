"""A tfds dataset prepared on disk (array_record file format), read without TensorFlow.

data.path is the builder directory (`.../NAME/VERSION`, opened with tfds.builder_from_directory),
or, with data.tfds_name set, the data_dir that tfds.builder(NAME, data_dir=...) searches.
data.split is any tfds split string ("train", "train[:90%]"). data.image_key and data.caption_key
name features, nested with "/" (COCO captions: image_key="image", caption_key="captions/text").
The caption feature may be a Text, a Sequence of Text (one is picked per example), or a
ClassLabel, whose class name fills data.label_template ("a photo of a {}.").
Images are read as encoded bytes (tfds SkipDecoding) and decoded by the image stage.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from etils import epath

from vljax.data.sources import skips


def _tfds():
  import tensorflow_datasets as tfds  # lazy: heavy, and only this source needs it

  return tfds


def open_builder(path: str | None, name: str | None = None, data_dir: str | None = None, what: str = "dataset"):
  """The builder of `path` (a builder directory, or a dataset folder of versions: the newest) or of
  `name` prepared under `data_dir`; `what` starts the error messages."""
  tfds = _tfds()
  if bool(path) == bool(name):
    raise ValueError(f"{what}: a tfds dataset needs either path=BUILDER_DIR or name=NAME (with data_dir); "
                     f"got path={path!r}, name={name!r}")
  if path:
    p = epath.Path(path)
    if not p.exists():
      raise FileNotFoundError(f"{what}: {os.fspath(path)!r} does not exist")
    if not (p / "dataset_info.json").exists():
      versions = sorted((d for d in p.iterdir() if _version(d.name) and (d / "dataset_info.json").exists()),
                        key=lambda d: _version(d.name))
      if not versions:
        raise ValueError(f"{what}: {os.fspath(path)!r} is not a prepared tfds dataset: no "
                         "dataset_info.json in it or in a version folder (like 1.0.0) under it")
      p = versions[-1]
    return tfds.builder_from_directory(os.fspath(p))
  if data_dir and not epath.Path(data_dir).exists():
    raise FileNotFoundError(f"{what}: data_dir {os.fspath(data_dir)!r} does not exist")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"{what}: {name!r} is neither a tfds dataset nor prepared under data_dir={data_dir!r}") from e
  if not builder.is_prepared():
    raise FileNotFoundError(f"{what}: tfds dataset {name!r} is not prepared under {builder.data_dir}; prepare "
                            "it (`tfds build`) or give its builder directory")
  return builder


def _version(name: str) -> tuple[int, ...] | None:
  return tuple(int(x) for x in name.split(".")) if re.fullmatch(r"\d+\.\d+\.\d+", name) else None


def _feature(features, key: str, what: str):
  """The tfds feature at a '/' path through FeaturesDicts (and Sequences of them)."""
  tfds = _tfds()
  node = features
  for part in key.split("/"):
    while isinstance(node, tfds.features.Sequence):
      node = node.feature
    if not isinstance(node, tfds.features.FeaturesDict) or part not in node.keys():
      valid = sorted(node.keys()) if isinstance(node, tfds.features.FeaturesDict) else []
      raise ValueError(f"tfds source: data.{what}={key!r} is not a feature; features here: {valid}")
    node = node[part]
  return node


def _nested(key: str, value) -> dict:
  """'a/b' -> {'a': {'b': value}}: the shape tfds decoders take."""
  out = value
  for part in reversed(key.split("/")):
    out = {part: out}
  return out


def _get(example: Mapping, key: str):
  for part in key.split("/"):
    example = example[part]
  return example


class TfdsSource:
  """Random access over a tfds split -> raw records {"key", "image": bytes, "caption"}."""

  def __init__(self, path: str, split: str = "train", image_key: str = "image", caption_key: str = "caption",
               tfds_name: str = "", label_template: str = "a photo of a {}."):
    tfds = _tfds()
    if not path:
      raise ValueError("tfds source: data.path is empty; give the builder directory (or the data_dir with "
                       "data.tfds_name)")
    builder = (open_builder(None, name=tfds_name, data_dir=path, what="tfds source") if tfds_name
               else open_builder(path, what="tfds source"))
    features = builder.info.features
    image_feature = _feature(features, image_key, "image_key")
    if not isinstance(image_feature, tfds.features.Image):
      raise ValueError(f"tfds source: data.image_key={image_key!r} is a {type(image_feature).__name__}, "
                       "not an Image feature")
    caption_feature = _feature(features, caption_key, "caption_key")
    self.label_names: Sequence[str] | None = None
    if isinstance(caption_feature, tfds.features.ClassLabel):
      self.label_names = list(caption_feature.names)
      if "{}" not in label_template:
        raise ValueError(f"data.label_template={label_template!r} needs a '{{}}' for the class name")
    self.image_key, self.caption_key, self.label_template = image_key, caption_key, label_template
    try:
      self._source = builder.as_data_source(split, decoders=_nested(image_key, tfds.decode.SkipDecoding()))
    except (ValueError, KeyError) as e:
      raise ValueError(f"tfds source: data.split={split!r} cannot be read from {path!r}; splits: "
                       f"{sorted(builder.info.splits)} ({e})") from e
    if len(self._source) == 0:
      raise ValueError(f"tfds source: split {split!r} of {path!r} is empty")
    self.description = f"{builder.name}:{split}"

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    try:
      example = self._source[index]
      image, caption = _get(example, self.image_key), _get(example, self.caption_key)
    except (KeyError, TypeError, ValueError):
      return skips.marker("bad_record")
    if self.label_names is not None:
      caption = self.label_template.format(self.label_names[int(caption)])
    return {"key": f"{self.description}/{index}", "image": image, "caption": caption}

  def __repr__(self) -> str:
    return f"TfdsSource({self.description}, {len(self)} examples)"
