"""Evaluation sets on disk: a prepared tfds dataset, or a JSONL file of records with an image folder.

  dataset = dict(source="tfds", path=BUILDER_DIR, split="validation")   # or name=..., data_dir=...
  dataset = dict(source="jsonl", path="val.jsonl", image_root=FOLDER)   # {"image": "a.jpg", ...} per line

Keys of `dataset`:
  source        "tfds" (default) or "jsonl"
  path          tfds: the builder directory (DATA_DIR/NAME/VERSION; DATA_DIR/NAME takes the newest
                version); jsonl: the file
  name, data_dir  tfds, instead of path: dataset NAME prepared under data_dir
  split         tfds split string; default "validation" (classification) or "test" (captions)
  image_key     "image"
  label_key     "label" (classification)
  class_names   None: the tfds ClassLabel names; or a list, or a text file with one name per line
  caption_key   "captions" (captions): texts, a list of texts, or records whose "text" field is used;
                "a/b" reaches into nested records ("captions/text")
  image_root    jsonl: the folder image paths are relative to (default: the file's folder)
  num_threads   decoding threads (default: min(8, cores))
  cache_mb      sets whose crops fit in this (default 1024) are decoded once, when the evaluator is
                built; larger ones are decoded chunk by chunk at every evaluation

`open_classification` reads labels and class names, `open_captions` each image's captions; both check
everything about the config when they open the set, so a bad one fails before training starts.
Images are decoded, resized (shorter side) and center-cropped to the model's size, and normalised with
the run's preset (`EvalImages.map`). Undecodable images (and missing JSONL image files) are skipped
and counted."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging
from etils import epath

from vljax.data import images as images_lib
from vljax.data.sources import tfds_source

SOURCES = ("tfds", "jsonl")
COMMON_KEYS = ("source", "path", "name", "data_dir", "split", "image_key", "image_root", "num_threads",
               "cache_mb")
CLASSIFICATION_KEYS = (*COMMON_KEYS, "label_key", "class_names")
CAPTION_KEYS = (*COMMON_KEYS, "caption_key")
DEFAULT_CACHE_MB = 1024  # crops of sets up to this size are decoded once, when the evaluator is built
DECODE_CHUNK = 256


# ---------------------------------------------------------------------------- readers

class _TfdsReader:
  """Random access to one split of a prepared tfds dataset (array_record files, no TensorFlow)."""

  def __init__(self, spec: Mapping[str, Any], default_split: str, image_key: str):
    import tensorflow_datasets as tfds

    builder = tfds_source.open_builder(spec.get("path"), name=spec.get("name"), data_dir=spec.get("data_dir"))
    split = spec.get("split") or default_split
    available = sorted(builder.info.splits)
    for part in split.split("+"):  # tfds split expressions: "train+validation[:10%]"
      base = part.split("[")[0].strip()
      if base not in available:
        raise ValueError(f"dataset split {split!r}: {base!r} is not a split of {builder.data_dir}; "
                         f"available: {available}")
    self.features = builder.info.features
    if image_key not in self.features or not isinstance(self.features[image_key], tfds.features.Image):
      images = [k for k, f in self.features.items() if isinstance(f, tfds.features.Image)]
      raise ValueError(f"dataset image_key {image_key!r} is not an image feature of {builder.data_dir}; "
                       f"image features: {images}")
    try:
      self.source = builder.as_data_source(split, decoders={image_key: tfds.decode.SkipDecoding()})
    except (NotImplementedError, ValueError) as e:
      raise ValueError(f"cannot read {builder.data_dir} split {split!r} with random access (eval sets "
                       f"are read from array_record files): {e}") from e
    self.image_key, self.where = image_key, f"{builder.data_dir} [{split}]"

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict:
    return self.source[i]

  def image_bytes(self, i: int) -> bytes:
    return self.source[i][self.image_key]

  def check_key(self, key: str, what: str) -> None:
    top = key.split("/")[0]
    if top not in self.features:
      raise ValueError(f"dataset {what} {key!r} is not a feature of {self.where}; features: "
                       f"{sorted(self.features)}")


class _JsonlReader:
  """One JSON object per line; images are files under image_root (default: the JSONL's folder)."""

  def __init__(self, spec: Mapping[str, Any], image_key: str):
    path = spec.get("path")
    if not path:
      raise ValueError("a jsonl dataset needs path=FILE.jsonl")
    p = epath.Path(path)
    if not p.exists():
      raise FileNotFoundError(f"dataset path {os.fspath(path)!r} does not exist")
    self.root = epath.Path(spec.get("image_root") or p.parent)
    if not self.root.exists():
      raise FileNotFoundError(f"dataset image_root {os.fspath(self.root)!r} does not exist")
    self.rows, self.lines = [], []
    for n, line in enumerate(p.read_text().splitlines(), 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{os.fspath(path)}:{n}: not a JSON object: {e}") from e
      if not isinstance(row, dict) or not isinstance(row.get(image_key), str):
        raise ValueError(f"{os.fspath(path)}:{n}: needs an image path string under {image_key!r}; got "
                         f"{line[:200]!r}")
      self.rows.append(row)
      self.lines.append(n)
    self.image_key, self.where = image_key, os.fspath(path)
    if self.rows and not self._image_path(0).exists():  # a wrong image_root fails here, not at eval
      raise FileNotFoundError(f"image {os.fspath(self._image_path(0))!r} of {self.where}:{self.lines[0]} "
                              f"does not exist; image paths are relative to image_root={os.fspath(self.root)!r}")

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, i: int) -> dict:
    return self.rows[i]

  def _image_path(self, i: int) -> epath.Path:
    return self.root / self.rows[i][self.image_key]

  def image_bytes(self, i: int) -> bytes:
    return self._image_path(i).read_bytes()

  def check_key(self, key: str, what: str) -> None:
    del key, what  # checked per record: lines may differ


def as_dict(spec) -> dict | None:
  """An evaluator's `dataset` setting (ConfigDict or mapping) as a plain dict; None stays None."""
  if spec is None:
    return None
  return dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)


def check_keys(settings, allowed: Sequence[str], where: str) -> None:
  unknown = sorted(set(settings.keys()) - set(allowed))
  if unknown:
    raise ValueError(f"{where}: unknown key(s) {unknown}; valid: {sorted(allowed)}")


def _open_reader(spec: Mapping[str, Any], allowed: Sequence[str], default_split: str):
  check_keys(spec, allowed, "dataset")
  source = spec.get("source", "tfds")
  image_key = spec.get("image_key") or "image"
  if source == "tfds":
    return _TfdsReader(spec, default_split, image_key)
  if source == "jsonl":
    return _JsonlReader(spec, image_key)
  raise ValueError(f"dataset source {source!r} is unknown; valid: {list(SOURCES)}")


def _where(reader, i: int) -> str:
  return f"{reader.where}:{reader.lines[i]}" if isinstance(reader, _JsonlReader) else f"{reader.where} example {i}"


def _first(reader, num_examples: int | None) -> range:
  if num_examples is not None and int(num_examples) < 1:
    raise ValueError(f"num_examples={num_examples} must be >= 1 (or None for the whole set)")
  n = len(reader) if num_examples is None else min(len(reader), int(num_examples))
  if n == 0:
    raise ValueError(f"dataset {reader.where} is empty")
  return range(n)


# ---------------------------------------------------------------------------- images

class ArrayImages:
  """Images already in memory and normalised (the shapes world): one call over all of them."""

  skipped = 0

  def __init__(self, images: np.ndarray):
    self.images = images

  def __len__(self) -> int:
    return len(self.images)

  def map(self, fn: Callable[..., np.ndarray], chunk: int, *, with_positions: bool = False
          ) -> tuple[np.ndarray, np.ndarray]:
    positions = np.arange(len(self.images))
    if with_positions:  # the set at once: pairs of an image with its own texts
      return fn(self.images, positions), positions
    del chunk  # the runner chunks
    return fn(self.images), positions


class EvalImages:
  """The images of an eval set, cropped to `size` and normalised with `normalization`, a chunk at a
  time; `map` returns fn's outputs over the decodable images and their positions in the set."""

  def __init__(self, read: Callable[[int], bytes], indices: Sequence[int], size: int, normalization: str,
               num_threads: int | None = None, cache_mb: float = DEFAULT_CACHE_MB,
               describe: Callable[[int], str] = str, where: str = ""):
    images_lib.check_normalization(normalization)
    self.read, self.indices, self.size, self.normalization = read, list(indices), int(size), normalization
    self.num_threads = int(num_threads or min(8, os.cpu_count() or 1))
    self.describe, self.where, self.skipped, self._cache = describe, where, None, None
    if len(self.indices) * self.size * self.size * 3 <= cache_mb * 2**20:
      pixels, kept = [], []
      for pos, crops in self._decoded(DECODE_CHUNK):
        pixels.append(crops)
        kept.append(pos)
      self._cache = (np.concatenate(pixels), np.concatenate(kept))

  def __len__(self) -> int:
    return len(self.indices)

  @property
  def in_memory(self) -> bool:
    """Whether the crops were decoded once at build (the set fits cache_mb)."""
    return self._cache is not None

  def _crop(self, data: bytes | Exception) -> np.ndarray | Exception:
    if isinstance(data, Exception):
      return data
    try:
      return images_lib.resize_center_crop(images_lib.decode_image(data), self.size)
    except images_lib.CorruptImageError as e:
      return e

  def _read(self, pos: int) -> bytes | Exception:
    try:
      return self.read(self.indices[pos])
    except OSError as e:  # a missing or unreadable file counts as a corrupt image
      return e

  def _decoded(self, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions, uint8 crops) of the decodable images, chunk by chunk; counts the others. The next
    chunk is read and decoded while the caller works on this one."""
    skipped, bad_examples = 0, []
    starts = range(0, len(self.indices), chunk)

    def load(start):
      positions = range(start, min(start + chunk, len(self.indices)))
      raw = [self._read(p) for p in positions]  # reads in order on one thread; decoding goes wide
      return positions, list(decoders.map(self._crop, raw))

    with concurrent.futures.ThreadPoolExecutor(self.num_threads) as decoders, \
         concurrent.futures.ThreadPoolExecutor(1) as loader:
      pending = loader.submit(load, starts[0]) if starts else None
      for k in range(len(starts)):
        positions, crops = pending.result()
        if k + 1 < len(starts):
          pending = loader.submit(load, starts[k + 1])
        ok = [i for i, c in enumerate(crops) if not isinstance(c, Exception)]
        bad = [(positions[i], c) for i, c in enumerate(crops) if isinstance(c, Exception)]
        skipped += len(bad)
        bad_examples += bad[:3 - len(bad_examples)]
        yield (np.asarray([positions[i] for i in ok], np.int64),
               np.stack([crops[i] for i in ok]) if ok else np.zeros((0, self.size, self.size, 3), np.uint8))
    if self.skipped is None and skipped:
      logging.warning("%s: skipped %d undecodable image(s), e.g. %s", self.where, skipped,
                      "; ".join(f"{self.describe(self.indices[p])}: {e}" for p, e in bad_examples))
    self.skipped = skipped
    if skipped == len(self.indices):
      raise ValueError(f"all {skipped} images of {self.where} are undecodable, e.g. {bad_examples[0][1]}")

  def _chunks(self, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    if self._cache is None:
      yield from self._decoded(chunk)
      return
    pixels, kept = self._cache
    for start in range(0, len(kept), chunk):
      yield kept[start:start + chunk], pixels[start:start + chunk]

  def map(self, fn: Callable[..., np.ndarray], chunk: int, *, with_positions: bool = False
          ) -> tuple[np.ndarray, np.ndarray]:
    """fn over normalised float32 [n <= chunk, size, size, 3] batches (and, with_positions, the
    batch's positions in the set: for pairs of an image with its own texts), outputs concatenated."""
    outs, kept = [], []
    for positions, pixels in self._chunks(chunk):
      if len(positions):
        pixels = images_lib.normalize(pixels, self.normalization)
        outs.append(fn(pixels, positions) if with_positions else fn(pixels))
        kept.append(positions)
    return np.concatenate(outs), np.concatenate(kept)


def _images(reader, indices: Sequence[int], spec: Mapping[str, Any], size: int, normalization: str) -> EvalImages:
  return EvalImages(reader.image_bytes, indices, size, normalization, num_threads=spec.get("num_threads"),
                    cache_mb=float(spec.get("cache_mb", DEFAULT_CACHE_MB)),
                    describe=lambda i: _where(reader, i), where=reader.where)


# ---------------------------------------------------------------------------- classification

@dataclasses.dataclass
class ClassificationSet:
  images: EvalImages
  labels: np.ndarray  # [len(images)] int64
  class_names: list[str]


def open_classification(spec: Mapping[str, Any], *, image_size: int, normalization: str = "siglip",
                        num_examples: int | None = None) -> ClassificationSet:
  """Images, labels and class names (given, or the tfds ClassLabel names) of a classification set."""
  reader = _open_reader(spec, CLASSIFICATION_KEYS, "validation")
  label_key = spec.get("label_key") or "label"
  reader.check_key(label_key, "label_key")
  given = spec.get("class_names")
  names = _class_names(given) if given is not None else _tfds_class_names(reader, label_key)
  num_labels = getattr(_feature(reader, label_key), "num_classes", None)
  if num_labels is not None and num_labels != len(names):
    raise ValueError(f"{len(names)} class_names given but label {label_key!r} of {reader.where} has "
                     f"{num_labels} classes; give one name per class, in label order")
  indices = _first(reader, num_examples)
  labels = np.empty(len(indices), np.int64)
  for i in indices:
    value = _lookup(reader[i], label_key, reader, i)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise ValueError(f"label {label_key!r} of {_where(reader, i)} is {value!r}, not an integer class index")
    if not 0 <= value < len(names):
      raise ValueError(f"label {int(value)} of {_where(reader, i)} is out of range: {len(names)} class "
                       f"names give labels 0..{len(names) - 1}")
    labels[i] = value
  return ClassificationSet(_images(reader, indices, spec, image_size, normalization), labels, names)


def _class_names(given: str | Sequence[str]) -> list[str]:
  """A list of names, or the path of a text file with one name per line."""
  if isinstance(given, (str, os.PathLike)):
    p = epath.Path(given)
    if not p.exists():
      raise FileNotFoundError(f"class_names file {os.fspath(given)!r} does not exist")
    names = [line.strip() for line in p.read_text().splitlines() if line.strip()]
  else:
    names = [str(n) for n in given]
  if not names:
    raise ValueError(f"class_names {given!r} holds no names")
  return names


def _tfds_class_names(reader, label_key: str) -> list[str]:
  names = getattr(_feature(reader, label_key), "names", None)
  if not names:
    raise ValueError(f"label {label_key!r} of {reader.where} has no class names (not a tfds ClassLabel); "
                     "give class_names=[...] or the path of a file with one name per line")
  if all(re.fullmatch(r"n\d{8}", n) for n in names[:10]):
    logging.warning("%s: class names look like WordNet ids (%s, ...); zero-shot prompts need words: set "
                    "class_names", reader.where, names[0])
  return [n.replace("_", " ") for n in names]  # tfds names use "_" for spaces ("maple_tree")


def _feature(reader, key: str):
  """The tfds feature of a top-level key, else None."""
  return reader.features[key] if isinstance(reader, _TfdsReader) and key in reader.features else None


def _lookup(record: Mapping[str, Any], key: str, reader, i: int) -> Any:
  """record["a"]["b"] for key "a/b"."""
  value = record
  for part in key.split("/"):
    if not isinstance(value, Mapping) or part not in value:
      have = sorted(value) if isinstance(value, Mapping) else type(value).__name__
      raise ValueError(f"{_where(reader, i)} has no {key!r} (at {part!r}: {have})")
    value = value[part]
  return value


# ---------------------------------------------------------------------------- captions

@dataclasses.dataclass
class CaptionSet:
  images: EvalImages
  captions: list[list[str]]  # one list per image, at least one caption each


def open_captions(spec: Mapping[str, Any], *, image_size: int, normalization: str = "siglip",
                  num_examples: int | None = None) -> CaptionSet:
  """Images with several captions each: a Sequence(Text) feature or a list in JSONL ("captions"),
  or a COCO-style sequence of dicts (its "text" field, or caption_key="captions/text")."""
  reader = _open_reader(spec, CAPTION_KEYS, "test")
  caption_key = spec.get("caption_key") or "captions"
  reader.check_key(caption_key, "caption_key")
  first = _first(reader, num_examples)
  indices, captions = [], []
  for i in first:
    texts = _texts(_lookup(reader[i], caption_key, reader, i), caption_key, reader, i)
    if texts:  # an image without captions can be retrieved by nothing
      indices.append(i)
      captions.append(texts)
  if not indices:
    raise ValueError(f"no image of {reader.where} has a caption under {caption_key!r}")
  if len(indices) < len(first):
    logging.warning("%s: %d image(s) without captions left out", reader.where, len(first) - len(indices))
  return CaptionSet(_images(reader, indices, spec, image_size, normalization), captions)


def _texts(value: Any, key: str, reader, i: int) -> list[str]:
  if isinstance(value, Mapping):  # tfds Sequence({"text": Text(), "id": ...}) reads as a dict of lists
    if "text" not in value:
      raise ValueError(f"captions {key!r} of {_where(reader, i)} are records with fields {sorted(value)}; "
                       f"name the text field, e.g. caption_key='{key}/{sorted(value)[0]}'")
    value = value["text"]
  if isinstance(value, (str, bytes)):
    value = [value]
  if isinstance(value, np.ndarray):
    value = value.tolist()
  if not isinstance(value, (list, tuple)):
    raise ValueError(f"captions {key!r} of {_where(reader, i)} are {type(value).__name__}, not texts")
  texts = [v.decode("utf-8") if isinstance(v, bytes) else v for v in value]
  if not all(isinstance(t, str) for t in texts):
    raise ValueError(f"captions {key!r} of {_where(reader, i)} hold non-text values: {texts[:3]!r}")
  return [t.strip() for t in texts if t.strip()]
