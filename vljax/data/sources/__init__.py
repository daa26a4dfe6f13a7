"""Real image-text training data: one module per on-disk format, all yielding raw records.

  tfds          tfds_source.py   a prepared tfds dataset (array_record files), no TensorFlow
  array_record  records.py       ArrayRecord files of msgpack records (the fast path)
  webdataset    webdataset.py    img2dataset-style .tar shards, streamed
  folder        folder.py        image files listed in a JSONL or CSV file
  mixture       (here)           a weighted mixture of the above

Config keys under `data` (defaults in vljax.config.base_config; pipeline.py builds the grain
pipeline from them):

  name            "shapes" (the embedded world, see shapes.py) or one of SOURCE_NAMES
  path            tfds: the builder directory (or the data_dir, with tfds_name); array_record and
                  webdataset: a file, a directory, or a pattern with braces and globs
                  ("laion/{00000..00099}.tar"); folder: the .jsonl/.csv file or its directory
  split           tfds split ("train", "train[:95%]")
  tfds_name       tfds dataset name, path then being its data_dir ("": path is the builder dir)
  image_key       the image's tfds feature / record field / JSONL or CSV column ("image")
  caption_key     the caption's tfds feature / record field / column / shard .json field
                  ("caption"); tfds captions may be a Sequence (one picked per example from the
                  seed) or a ClassLabel (its class name in label_template)
  label_template  caption for a class label ("a photo of a {}.")
  question_key    the question field of question-answer records ("question"; folder, array_record,
                  and the .json of webdataset samples)
  answer_key      the answer field ("answer"): a text, or several (training picks one per example)
  chunks_key      the field holding an interleaved document's list of chunks ("": no documents);
                  records, documents and the formats they feed: fields.py
  conversation_key  the field of a multi-turn conversation's turns ("conversations", LLaVA's; folder
                  and array_record): vljax/data/conversations.py
  format          the batch format (vljax/data/formats): caption formats read caption records;
                  chunked ones ("vlm", "lm") caption and question-answer records grouped
                  data.chunks to a sequence, or documents cut into sequences of data.chunks chunks
  normalization   pixel normalisation preset of images.NORMALIZATIONS: "siglip" ([-1, 1], what
                  the shapes world has always used), "clip", "imagenet", "inception"
  crop_scale      area range of the training random resized crop (vljax.config.CROP_SCALE)
  cycle_length    webdataset shards each worker reads at once (4)
  sources         mixture: a tuple of dicts, each with name, path, weight and optionally split,
                  tfds_name, image_key, caption_key, label_template, question_key, answer_key,
                  chunks_key, conversation_key (unset ones come from data)
  image_size, max_len, tokenizer, workers, num_threads, prefetch: as for shapes.

Every name, path, key and preset is checked by `check` before any compute; errors name the bad
value and what would be valid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from vljax.config import CROP_SCALE
from vljax.data import images
from vljax.data.sources import fields, folder, records, tfds_source, webdataset

SOURCE_NAMES = ("tfds", "array_record", "webdataset", "folder", "mixture")
MAP_SOURCES = ("tfds", "array_record", "folder")  # random access; webdataset streams
SPEC_KEYS = ("name", "path", "split", "tfds_name", "image_key", "caption_key", "label_template", "question_key",
             "answer_key", "chunks_key", "conversation_key")
MIXTURE_ENTRY_KEYS = SPEC_KEYS + ("weight",)


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """One source to read: the data config's own keys, or a mixture entry over them."""

  name: str
  path: str
  split: str = "train"
  tfds_name: str = ""
  image_key: str = "image"
  caption_key: str = "caption"
  label_template: str = "a photo of a {}."
  question_key: str = "question"
  answer_key: str = "answer"
  chunks_key: str = ""
  conversation_key: str = "conversations"
  weight: float = 1.0

  @property
  def label(self) -> str:
    return f"{self.name}:{self.path}" + (f"[{self.split}]" if self.name == "tfds" else "")


def _spec(entry: Mapping[str, Any], defaults: Mapping[str, Any], where: str) -> SourceSpec:
  name = entry.get("name")
  if name not in SOURCE_NAMES or name == "mixture":
    valid = [n for n in SOURCE_NAMES if n != "mixture"]
    raise ValueError(f"{where}: unknown source name {name!r}; valid: {valid}")
  values = {k: entry.get(k, defaults.get(k)) for k in SPEC_KEYS}
  values = {k: v for k, v in values.items() if v is not None}
  weight = float(entry.get("weight", 1.0))
  if not weight > 0:
    raise ValueError(f"{where}: weight={weight} must be > 0")
  return SourceSpec(**{k: str(v) for k, v in values.items()}, weight=weight)


def specs(data_cfg: Mapping[str, Any]) -> list[SourceSpec]:
  """The sources a data config reads: one, or each entry of a mixture."""
  name = data_cfg.get("name")
  if name != "mixture":
    return [_spec(data_cfg, {}, "data")]
  entries = data_cfg.get("sources") or ()
  if not entries:
    raise ValueError("data.name='mixture' needs data.sources: a tuple of dicts with name, path and weight")
  out = []
  for i, entry in enumerate(entries):
    if not hasattr(entry, "keys") or not hasattr(entry, "get"):  # a dict or a ConfigDict
      raise ValueError(f"data.sources[{i}] is {entry!r}; each entry is a dict with name, path and weight")
    unknown = sorted(set(entry.keys()) - set(MIXTURE_ENTRY_KEYS))
    if unknown:
      raise ValueError(f"data.sources[{i}]: unknown key(s) {unknown}; valid: {list(MIXTURE_ENTRY_KEYS)}")
    out.append(_spec(entry, data_cfg, f"data.sources[{i}]"))
  return out


def open_map_source(spec: SourceSpec, chunked: bool = False):
  """A random-access source of raw records (len + getitem; picklable into grain workers); `chunked`:
  the batch format reads question-answer records and documents too."""
  if spec.name == "tfds":
    return tfds_source.TfdsSource(spec.path, spec.split, spec.image_key, spec.caption_key, spec.tfds_name,
                                  spec.label_template)
  keys = dataclasses.astuple(fields.record_keys(spec, chunked))
  if spec.name == "array_record":
    source = records.ArrayRecordSource(spec.path, *keys)
    source.check_keys()
    return source
  if spec.name == "folder":
    return folder.FolderSource(spec.path, *keys)
  raise ValueError(f"{spec.name!r} is not a random-access source; those are {list(MAP_SOURCES)}")


def crop_scale(data_cfg: Mapping[str, Any]) -> tuple[float, float]:
  scale = tuple(float(s) for s in data_cfg.get("crop_scale", CROP_SCALE))
  if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
    raise ValueError(f"data.crop_scale={scale} must be (low, high) with 0 < low <= high <= 1")
  return scale


def check_settings(data_cfg: Mapping[str, Any]) -> list[SourceSpec]:
  """The sources of a real-data config, its names, presets and numbers checked (no file opened)."""
  images.check_normalization(data_cfg.get("normalization", "siglip"))
  crop_scale(data_cfg)
  fmt = check_chunks(data_cfg)
  if int(data_cfg.get("cycle_length", 4)) < 1:
    raise ValueError(f"data.cycle_length={data_cfg.get('cycle_length')} must be >= 1")
  out = specs(data_cfg)
  chunked = _chunked_formats()
  for i, spec in enumerate(out):
    where = "data" if data_cfg.get("name") != "mixture" else f"data.sources[{i}]"
    fields.check_spec(spec, where, fmt.name, fmt.chunked, chunked)
  return out


def _chunked_formats() -> list[str]:
  from vljax.data import formats  # lazy: formats import the data modules that import this one
  return sorted(f.name for f in formats.FORMATS.values() if f.chunked)


def check_chunks(data_cfg: Mapping[str, Any]):
  """data.format and data.chunks (shapes and real data alike): the batch format."""
  from vljax.data import formats
  fmt = formats.get_format(data_cfg.get("format", "caption"))
  chunks = data_cfg.get("chunks", 1)
  if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1:
    raise ValueError(f"data.chunks={chunks!r} must be an int >= 1 (chunks per sequence of a chunked format)")
  if chunks != 1 and not fmt.chunked:
    raise ValueError(f"data.chunks={chunks}: several chunks per sequence need a chunked data.format, one of "
                     f"{_chunked_formats()}, not data.format={fmt.name!r}; valid: data.chunks=1")
  return fmt


def check(data_cfg: Mapping[str, Any]) -> list[SourceSpec]:
  """check_settings, then every path and key, by opening the sources."""
  out = check_settings(data_cfg)
  chunked = check_chunks(data_cfg).chunked
  for spec in out:
    if spec.name == "webdataset":
      webdataset.shard_paths(spec.path)
    else:
      open_map_source(spec, chunked)
  return out
