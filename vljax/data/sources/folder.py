"""A folder of images listed in a JSONL or CSV file (random access).

data.path is the index file (`*.jsonl` / `*.csv`, or `*.json`: one array of the objects a JSONL file
has a line each, as LLaVA's instruction files are), or a directory holding exactly one. Each JSONL
line is an object and each CSV row (with a header) has columns; data.image_key names the image's
path (relative to the index file's directory, or absolute) and data.caption_key its caption
(a JSONL value may be a list of captions). For the chunked formats ("vlm", "lm") a row may instead
hold a question and its answer (data.question_key / data.answer_key), and with data.chunks_key
set each JSONL line is an interleaved document (fields.py has the schema):

  {"image": "images/0.png", "caption": "a red circle"}
  {"image": "images/1.png", "question": "what color is the star?", "answer": "blue"}
  {"chunks": [{"image": "images/2.png", "caption": "..."}, {"image": "images/3.png", "question": "...",
              "answer": "..."}]}
  {"image": "images/4.png", "conversations": [{"from": "human", "value": "<image> what is this?"},
                                              {"from": "gpt", "value": "a red circle"}, ...]}

Rows are read once, at start; image files when used. A line that is not valid JSON, or a row (chunk)
without an image path, is counted as `bad_record`; a missing image file as `missing_image`.
"""

from __future__ import annotations

import csv
import glob
import json
import os

from vljax.data.sources import fields, skips

INDEX_SUFFIXES = (".jsonl", ".csv", ".json")  # .json: one JSON array of rows (LLaVA's instruction files)


def index_file(path: str) -> str:
  """The JSONL/CSV file data.path names (or the only one in the directory it names)."""
  if not path:
    raise ValueError("folder source: data.path is empty; give a .jsonl or .csv file or its directory")
  if os.path.isdir(path):
    found = sorted(p for s in INDEX_SUFFIXES for p in glob.glob(os.path.join(path, f"*{s}")))
    if len(found) != 1:
      raise FileNotFoundError(f"folder source: the directory {path!r} must hold exactly one index file "
                              f"({', '.join(INDEX_SUFFIXES)}), found {[os.path.basename(p) for p in found]}")
    return found[0]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"folder source: {path!r} does not exist")
  if not path.endswith(INDEX_SUFFIXES):
    raise ValueError(f"folder source: {path!r} is none of {', '.join(INDEX_SUFFIXES)}")
  return path


def read_rows(path: str) -> tuple[list, list[str]]:
  """(rows, column names): JSONL lines as dicts (None where not a JSON object), or CSV rows."""
  with open(path, newline="", encoding="utf-8") as f:
    if path.endswith(".csv"):
      reader = csv.DictReader(f)
      return list(reader), list(reader.fieldnames or [])
    if path.endswith(".json"):
      try:
        parsed = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"folder source: {path!r} is not valid JSON ({e}); valid: one array of row objects, "
                         "or a .jsonl file with one object per line") from e
      if not isinstance(parsed, list):
        raise ValueError(f"folder source: {path!r} holds a JSON {type(parsed).__name__}; valid: an array of rows")
    else:
      parsed = []
      for line in f:
        if line.strip():
          try:
            parsed.append(json.loads(line))
          except json.JSONDecodeError:
            parsed.append(None)
    rows, columns = [], {}
    for row in parsed:
      rows.append(row if isinstance(row, dict) else None)
      if isinstance(row, dict):
        columns.update(dict.fromkeys(row))
    return rows, list(columns)


class FolderSource:
  """Random access over the listed images -> raw records (fields.read_record) with image bytes."""

  def __init__(self, path: str, image_key: str = "image", caption_key: str = "caption", question_key: str = "",
               answer_key: str = "", chunks_key: str = "", conversation_key: str = ""):
    self.index = index_file(path)
    self.root = os.path.dirname(os.path.abspath(self.index))
    rows, self.columns = read_rows(self.index)
    if not rows:
      raise ValueError(f"folder source: {self.index!r} lists no image")
    self.keys = fields.RecordKeys(image_key, caption_key, question_key, answer_key, chunks_key, conversation_key)
    fields.check_present(self.keys, self.columns, f"folder source {self.index!r}", "columns")
    # Only the fields read: compact to pickle into grain's worker processes.
    used = self.keys.used()
    self.items = [None if row is None else {k: row[k] for k in used if k in row} for row in rows]

  def __len__(self) -> int:
    return len(self.items)

  def __getitem__(self, index: int) -> dict:
    item = self.items[index]
    key = str(item.get(self.keys.image, index)) if isinstance(item, dict) else str(index)
    return fields.read_record(item, self.keys, self._read_image, key)

  def _read_image(self, rel) -> bytes | str:
    """The image file's bytes, or a skip reason."""
    if not isinstance(rel, str) or not rel:
      return "bad_record"
    try:
      with open(os.path.join(self.root, rel), "rb") as f:
        return f.read()
    except OSError:  # missing, a directory, unreadable
      return "missing_image"

  def __repr__(self) -> str:
    return f"FolderSource({self.index!r}, {len(self)} rows)"
