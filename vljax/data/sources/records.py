"""ArrayRecord files of image-caption records: the fast path (random access, global shuffle,
exact resume).

Record format: each record is one msgpack map (what `flax.serialization.msgpack_restore` also
reads) with

  "key":     str             a sample id (the shard sample key, the image's relative path, ...)
  "image":   bytes           the image file as encoded on disk (JPEG / PNG / WebP), not re-encoded
  "caption": str | [str]     one caption, or several (training picks one per example)

Files are written with `group_size:1` (one record per chunk) so any record reads without its
neighbours. `python -m vljax.data.convert` writes them from tar shards or a JSONL/CSV folder.
Records from other tools work too when their maps hold the image under data.image_key and the
caption under data.caption_key.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import grain
import msgpack

from vljax.data.sources import files, skips

SUFFIX = ".array_record"
WRITER_OPTIONS = "group_size:1"


def encode_record(key: str, image: bytes, caption) -> bytes:
  return msgpack.packb({"key": key, "image": bytes(image), "caption": caption}, use_bin_type=True)


def decode_record(data: bytes) -> dict:
  return msgpack.unpackb(data, raw=False)


def record_files(pattern: str) -> list[str]:
  return files.resolve_files(pattern, "array_record source", suffix=SUFFIX)


class ArrayRecordSource:
  """Random access over ArrayRecord files -> raw records (grain's ArrayRecordDataSource underneath)."""

  def __init__(self, pattern: str, image_key: str = "image", caption_key: str = "caption"):
    self.paths = record_files(pattern)
    self.image_key, self.caption_key = image_key, caption_key
    self._source = grain.sources.ArrayRecordDataSource(self.paths)
    if len(self._source) == 0:
      raise ValueError(f"array_record source: {pattern!r} ({len(self.paths)} file(s)) holds no record")

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    try:
      record = decode_record(self._source[index])
    except (ValueError, TypeError, msgpack.UnpackException):
      return skips.marker("bad_record")
    if not isinstance(record, Mapping) or not isinstance(record.get(self.image_key), bytes):
      return skips.marker("bad_record")
    return {"key": str(record.get("key", index)), "image": record[self.image_key],
            "caption": record.get(self.caption_key)}

  def check_keys(self) -> None:
    """The first record must hold image_key and caption_key (a wrong key would skip everything)."""
    record = self[0]
    if skips.is_marker(record):
      raise ValueError(f"array_record source: the first record of {self.paths[0]!r} is not a msgpack map "
                       f"with bytes under data.image_key={self.image_key!r}")
    record = decode_record(self._source[0])
    for what, key in (("image_key", self.image_key), ("caption_key", self.caption_key)):
      if key not in record:
        raise ValueError(f"array_record source: data.{what}={key!r} is not in its records; "
                         f"record keys: {sorted(record)}")

  def __repr__(self) -> str:
    return f"ArrayRecordSource({len(self.paths)} files, {len(self)} records)"


class RecordWriter:
  """Writes records to `output_dir/data-NNNNN.array_record`, `records_per_file` to a file."""

  def __init__(self, output_dir: str, records_per_file: int = 10_000):
    from array_record.python import array_record_module  # lazy: only writers need the module

    if records_per_file < 1:
      raise ValueError(f"records_per_file={records_per_file} must be >= 1")
    os.makedirs(output_dir, exist_ok=True)
    self._module, self.output_dir, self.records_per_file = array_record_module, output_dir, records_per_file
    self.paths: list[str] = []
    self._writer, self._in_file, self.written = None, 0, 0

  def write(self, key: str, image: bytes, caption) -> None:
    if self._writer is None or self._in_file == self.records_per_file:
      self._close_file()
      path = os.path.join(self.output_dir, f"data-{len(self.paths):05d}{SUFFIX}")
      self._writer = self._module.ArrayRecordWriter(path, WRITER_OPTIONS)
      self.paths.append(path)
    self._writer.write(encode_record(key, image, caption))
    self._in_file += 1
    self.written += 1

  def _close_file(self) -> None:
    if self._writer is not None:
      self._writer.close()
    self._writer, self._in_file = None, 0

  def close(self) -> list[str]:
    self._close_file()
    return self.paths

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def write_records(output_dir: str, records: Iterable[Mapping], records_per_file: int = 10_000) -> list[str]:
  """Every `{"key", "image", "caption"}` of `records` into ArrayRecord files; their paths."""
  with RecordWriter(output_dir, records_per_file) as writer:
    for r in records:
      writer.write(r["key"], r["image"], r["caption"])
  return writer.paths
