"""CapFilt's input: what `python -m vljax.data.convert` reads (tar shards, a folder's .jsonl/.csv
index) and ArrayRecord files, through vljax's source readers, cut into shards.

Random-access inputs (folder, array_record) make shards of `shard_size` consecutive records; a tar
input makes one shard per tar file. Each record has an index: (row,) or (tar file, sample), the
number its captions' random stream is derived from, so a record's synthetic captions do not depend
on which host or in which order it is processed.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterator
from typing import NamedTuple

from vljax.data.sources import folder, records, webdataset


class Item(NamedTuple):
  index: tuple[int, ...]
  record: dict  # a raw record {"key", "image", "caption"} or a skip marker


def kind_of(path: str) -> str:
  """"folder", "array_record" or "webdataset": convert's rule, plus ArrayRecord files."""
  if path.endswith(records.SUFFIX) or (os.path.isdir(path) and glob.glob(os.path.join(path, f"*{records.SUFFIX}"))):
    return "array_record"
  if path.endswith(folder.INDEX_SUFFIXES) or (
      os.path.isdir(path) and not glob.glob(os.path.join(path, f"*{webdataset.SUFFIX}"))):
    return "folder"
  return "webdataset"


class Input:
  """A source's records, shard by shard (errors for a missing or empty input come from its reader)."""

  def __init__(self, path: str, shard_size: int, image_key: str = "image", caption_key: str = "caption"):
    self.path, self.shard_size, self.kind = path, shard_size, kind_of(path)
    self.caption_key = caption_key
    if self.kind == "webdataset":
      self.tars = webdataset.shard_paths(path)
      self.num_shards, self.num_records = len(self.tars), None
      self.description = f"{len(self.tars)} tar shard(s)"
      return
    if self.kind == "folder":
      self.source = folder.FolderSource(path, image_key, caption_key)
    else:
      self.source = records.ArrayRecordSource(path, image_key, caption_key)
      self.source.check_keys()
    self.num_records = len(self.source)
    self.num_shards = math.ceil(self.num_records / shard_size)
    self.description = f"{self.kind} source of {self.num_records} records"

  def shard_records(self, shard: int) -> int | None:
    """How many records shard `shard` holds (None for a tar file: unknown until read)."""
    if self.num_records is None:
      return None
    return min(self.num_records, (shard + 1) * self.shard_size) - shard * self.shard_size

  def items(self, shard: int) -> Iterator[Item]:
    if not 0 <= shard < self.num_shards:
      raise IndexError(f"shard {shard} is out of range; the input has {self.num_shards}")
    if self.num_records is None:
      for i, record in enumerate(webdataset.read_shard(self.tars[shard], self.caption_key)):
        yield Item((shard, i), record)
      return
    start = shard * self.shard_size
    for row in range(start, start + self.shard_records(shard)):
      yield Item((row,), self.source[row])
