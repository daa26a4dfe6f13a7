"""ArrayRecord files of image-text records: the fast path (random access, global shuffle,
exact resume).

Record format: each record is one msgpack map (what `flax.serialization.msgpack_restore` also
reads) with

  "key":      str            a sample id (the shard sample key, the image's relative path, ...)
  "image":    bytes          the image file as encoded on disk (JPEG / PNG / WebP), not re-encoded
  "caption":  str | [str]    one caption, or several (training picks one per example)

or, for question-answer records (chunked formats "vlm" / "lm", see fields.py),

  "image": bytes, "question": str, "answer": str | [str]

or an interleaved document, read with data.chunks_key="chunks":

  "key": str, "chunks": [{"image": bytes, "caption": ...} | {"image": bytes, "question": ..., "answer": ...}]

Files are written with `group_size:1` (one record per chunk) so any record reads without its
neighbours. `python -m vljax.data.convert` writes them from tar shards or a JSONL/CSV folder.
Records from other tools work too when their maps hold the fields under data.image_key,
data.caption_key, data.question_key / data.answer_key (data.chunks_key), or a conversation's turns
under data.conversation_key (vljax/data/conversations.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import grain
import msgpack

from vljax.data.sources import fields, files, skips

SUFFIX = ".array_record"
WRITER_OPTIONS = "group_size:1"


def encode_record(key: str, image: bytes, caption) -> bytes:
  return pack({"key": key, "image": bytes(image), "caption": caption})


def pack(record: Mapping) -> bytes:
  """Any record map (question-answer, document) as msgpack."""
  return msgpack.packb(dict(record), use_bin_type=True)


def decode_record(data: bytes) -> dict:
  return msgpack.unpackb(data, raw=False)


def record_files(pattern: str) -> list[str]:
  return files.resolve_files(pattern, "array_record source", suffix=SUFFIX)


class ArrayRecordSource:
  """Random access over ArrayRecord files -> raw records (grain's ArrayRecordDataSource underneath)."""

  def __init__(self, pattern: str, image_key: str = "image", caption_key: str = "caption", question_key: str = "",
               answer_key: str = "", chunks_key: str = "", conversation_key: str = ""):
    self.paths = record_files(pattern)
    self.keys = fields.RecordKeys(image_key, caption_key, question_key, answer_key, chunks_key, conversation_key)
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
    key = str(record.get("key", index)) if isinstance(record, Mapping) else ""
    return fields.read_record(record, self.keys, _image_bytes, key)

  def check_keys(self) -> None:
    """The first record must hold the keys read (a wrong key would skip everything)."""
    try:
      record = decode_record(self._source[0])
    except (ValueError, TypeError, msgpack.UnpackException):
      record = None
    if not isinstance(record, Mapping):
      raise ValueError(f"array_record source: the first record of {self.paths[0]!r} is not a msgpack map")
    fields.check_present(self.keys, list(record), "array_record source", "record keys")
    first = self[0]
    if skips.is_marker(first) and first["skip"] == "bad_record":
      raise ValueError(f"array_record source: the first record of {self.paths[0]!r} has no bytes under "
                       f"data.image_key={self.keys.image!r}")

  def __repr__(self) -> str:
    return f"ArrayRecordSource({len(self.paths)} files, {len(self)} records)"


def _image_bytes(value) -> bytes | str:
  return value if isinstance(value, bytes) else "bad_record"


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
    self.write_packed(encode_record(key, image, caption))

  def write_packed(self, data: bytes) -> None:
    """One record already packed (`pack`, `encode_record`)."""
    if self._writer is None or self._in_file == self.records_per_file:
      self._close_file()
      path = os.path.join(self.output_dir, f"data-{len(self.paths):05d}{SUFFIX}")
      self._writer = self._module.ArrayRecordWriter(path, WRITER_OPTIONS)
      self.paths.append(path)
    self._writer.write(data)
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
