"""A folder of images listed in a JSONL or CSV file (random access).

data.path is the index file (`*.jsonl` / `*.csv`), or a directory holding exactly one. Each JSONL
line is an object and each CSV row (with a header) has columns; data.image_key names the image's
path (relative to the index file's directory, or absolute) and data.caption_key its caption
(a JSONL value may be a list of captions). Rows are read once, at start; image files when used.
A line that is not valid JSON, or a row without an image path, is counted as `bad_record`; a
missing image file as `missing_image`.
"""

from __future__ import annotations

import csv
import glob
import json
import os

from vljax.data.sources import skips

INDEX_SUFFIXES = (".jsonl", ".csv")


def index_file(path: str) -> str:
  """The JSONL/CSV file data.path names (or the only one in the directory it names)."""
  if not path:
    raise ValueError("folder source: data.path is empty; give a .jsonl or .csv file or its directory")
  if os.path.isdir(path):
    found = sorted(p for s in INDEX_SUFFIXES for p in glob.glob(os.path.join(path, f"*{s}")))
    if len(found) != 1:
      raise FileNotFoundError(f"folder source: the directory {path!r} must hold exactly one .jsonl or .csv "
                              f"file, found {[os.path.basename(p) for p in found]}")
    return found[0]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"folder source: {path!r} does not exist")
  if not path.endswith(INDEX_SUFFIXES):
    raise ValueError(f"folder source: {path!r} is neither .jsonl nor .csv")
  return path


def read_rows(path: str) -> tuple[list, list[str]]:
  """(rows, column names): JSONL lines as dicts (None where not a JSON object), or CSV rows."""
  with open(path, newline="", encoding="utf-8") as f:
    if path.endswith(".csv"):
      reader = csv.DictReader(f)
      return list(reader), list(reader.fieldnames or [])
    rows, columns = [], {}
    for line in f:
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        row = None
      rows.append(row if isinstance(row, dict) else None)
      if isinstance(row, dict):
        columns.update(dict.fromkeys(row))
    return rows, list(columns)


class FolderSource:
  """Random access over the listed images -> raw records {"key", "image": bytes, "caption"}."""

  def __init__(self, path: str, image_key: str = "image", caption_key: str = "caption"):
    self.index = index_file(path)
    self.root = os.path.dirname(os.path.abspath(self.index))
    rows, self.columns = read_rows(self.index)
    if not rows:
      raise ValueError(f"folder source: {self.index!r} lists no image")
    for what, key in (("image_key", image_key), ("caption_key", caption_key)):
      if key not in self.columns:
        raise ValueError(f"folder source: data.{what}={key!r} is not a column of {self.index!r}; "
                         f"its columns: {self.columns}")
    # (relative path, caption) pairs: compact to pickle into grain's worker processes.
    self.items = [None if row is None or not row.get(image_key) else (str(row[image_key]), row.get(caption_key))
                  for row in rows]

  def __len__(self) -> int:
    return len(self.items)

  def __getitem__(self, index: int) -> dict:
    item = self.items[index]
    if item is None:
      return skips.marker("bad_record")
    rel, caption = item
    try:
      with open(os.path.join(self.root, rel), "rb") as f:
        image = f.read()
    except OSError:  # missing, a directory, unreadable
      return skips.marker("missing_image")
    return {"key": rel, "image": image, "caption": caption}

  def __repr__(self) -> str:
    return f"FolderSource({self.index!r}, {len(self)} rows)"
