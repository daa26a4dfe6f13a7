"""img2dataset / webdataset `.tar` shards, streamed.

data.path is a pattern of uncompressed tar shards, local or on an object store (gs://): brace ranges (`shards/{00000..00099}.tar`),
lists (`{laion,coyo}/*.tar`), globs, or a directory (its `*.tar`). A sample is the run of
consecutive members sharing a key (the member name up to the first dot of its base name):
the image is the first `.jpg`/`.jpeg`/`.png`/`.webp`, the caption the `.txt`, else the
data.caption_key field of the `.json`. For a chunked format (data.question_key set, fields.py) a
`.json` holding data.question_key or data.answer_key makes the sample a question-answer record
instead, as a JSONL row would; webdataset has no documents (a sample has one image).

Streaming, in grain: host p of P reads shards p::P (fewer shards than hosts is an error); the
host's shards form an endless sequence, reshuffled every epoch from the seed
(`MapDataset.shuffle().repeat()`), read `data.cycle_length` at a time by grain's
`InterleaveIterDataset`, which mp_prefetch splits over worker processes by shard.

Resume is exact: a shard iterator's state is the byte offset of its next sample's first tar
header, and grain's interleave state records which shards are open and where. A restored
iterator seeks there and yields the same samples as the uninterrupted run (same workers and
cycle_length).
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator
from typing import Any

import grain
from etils import epath

from vljax.data.sources import files, skips

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SUFFIX = ".tar"
_DONE = -1  # state offset of a shard read to its end


def shard_paths(pattern: str) -> list[str]:
  return files.resolve_files(pattern, "webdataset source", suffix=SUFFIX)


def host_shards(paths: list[str], process_index: int, process_count: int) -> list[str]:
  """Shards p::P of this host; an error when some host would get none."""
  if len(paths) < process_count:
    raise ValueError(f"webdataset source: {len(paths)} shard(s) cannot be split over {process_count} hosts; "
                     "every host needs at least one shard (write more, smaller shards)")
  return paths[process_index::process_count]


def _split_name(name: str) -> tuple[str, str]:
  """'dir/000123.jpg' -> ('dir/000123', 'jpg'); 'a/b.c.json' -> ('a/b', 'c.json') (webdataset's rule)."""
  head, base = os.path.split(name)
  stem, _, ext = base.partition(".")
  return os.path.join(head, stem), ext.lower()


def _record(tar: tarfile.TarFile, key: str, members: list[tarfile.TarInfo], caption_key: str,
            qa_keys: tuple[str, str] = ("", "")) -> dict:
  """A sample's members -> raw record (or a marker); qa_keys: the .json's question and answer fields
  ("": captions only)."""
  by_ext = {ext: m for m in members for _, ext in [_split_name(m.name)]}
  image_ext = next((e for e in IMAGE_EXTENSIONS if e in by_ext), None)
  if image_ext is None:
    other = [e for e in by_ext if e not in ("txt", "json")]
    return skips.marker("not_an_image" if other else "missing_image")
  read = lambda ext: tar.extractfile(by_ext[ext]).read()  # noqa: E731
  meta = None
  if "json" in by_ext and (qa_keys[0] or "txt" not in by_ext):  # read only when it can matter
    try:
      meta = json.loads(read("json"))
    except ValueError:
      return skips.marker("bad_record")
    meta = meta if isinstance(meta, dict) else {}
  question, answer = qa_keys
  if question and meta and (question in meta or answer in meta):
    return {"key": key, "image": read(image_ext), "question": meta.get(question), "answer": meta.get(answer)}
  caption = read("txt").decode("utf-8", errors="replace") if "txt" in by_ext else (meta or {}).get(caption_key)
  return {"key": key, "image": read(image_ext), "caption": caption}


def _samples(path: str, offset: int, caption_key: str, qa_keys: tuple[str, str] = ("", "")
             ) -> Iterator[tuple[dict, int]]:
  """(raw record or marker, offset of the next sample) from the sample starting at byte `offset`.

  Hand-written over the standard library's tarfile: grain has no tar reader and the webdataset
  package is not a dependency. Headers are read one sample ahead, so a sample is complete when
  the next key (or the end) appears; its members are then read by seeking back.
  """
  try:
    f = epath.Path(path).open("rb")  # local, or gs:// (seekable)
  except OSError:
    yield skips.marker("empty_shard"), _DONE
    return
  with f:
    f.seek(offset)
    try:
      tar = tarfile.open(fileobj=f, mode="r:")
    except tarfile.TarError:  # empty or not a tar at all (truncated in its first header included)
      yield skips.marker("empty_shard" if offset == 0 else "truncated_shard"), _DONE
      return
    key, members, emitted = None, [], offset > 0
    try:
      for member in tar:
        if not member.isfile():
          continue
        member_key, _ = _split_name(member.name)
        if members and member_key != key:
          yield _record(tar, key, members, caption_key, qa_keys), member.offset
          emitted, members = True, []
        key = member_key
        members.append(member)
    except (tarfile.TarError, OSError, EOFError):  # the file ends inside a member or a header
      yield skips.marker("truncated_shard"), _DONE
      return
    if members:
      yield _record(tar, key, members, caption_key, qa_keys), _DONE
    elif not emitted:
      yield skips.marker("empty_shard"), _DONE


def read_shard(path: str, caption_key: str = "caption", question_key: str = "", answer_key: str = ""
               ) -> Iterator[dict]:
  """Every raw record (or marker) of one shard, in order: what the converter reads."""
  for record, _ in _samples(path, 0, caption_key, (question_key, answer_key)):
    yield record


class TarShardDataset(grain.IterDataset):
  """The samples of one shard, in order; the last element is flagged `shard_end`."""

  def __init__(self, path: str, caption_key: str = "caption", question_key: str = "", answer_key: str = ""):
    super().__init__()
    self.path, self.caption_key, self.qa_keys = path, caption_key, (question_key, answer_key)

  def __iter__(self) -> grain.DatasetIterator:
    return _TarShardIterator(self.path, self.caption_key, self.qa_keys)

  def __str__(self) -> str:
    return f"TarShardDataset({self.path!r})"


class _TarShardIterator(grain.DatasetIterator):

  def __init__(self, path: str, caption_key: str, qa_keys: tuple[str, str]):
    super().__init__()
    self._path, self._caption_key, self._qa_keys = path, caption_key, qa_keys
    self._offset = 0  # byte offset of the next sample's first header; _DONE at the end
    self._samples = None

  def __next__(self) -> dict:
    if self._offset == _DONE:
      raise StopIteration
    if self._samples is None:
      self._samples = _samples(self._path, self._offset, self._caption_key, self._qa_keys)
    record, self._offset = next(self._samples)
    if self._offset == _DONE:
      record = dict(record, shard_end=True)
    return record

  def get_state(self) -> dict[str, Any]:
    return {"offset": self._offset}

  def set_state(self, state: dict[str, Any]) -> None:
    self._close_file()
    self._offset = int(state["offset"])

  def _close_file(self) -> None:
    if self._samples is not None:
      self._samples.close()  # closes the shard's file now, not whenever the generator is collected
    self._samples = None

  def close(self) -> None:
    self._close_file()
    super().close()
