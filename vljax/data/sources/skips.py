"""Bad samples: skipped, counted, and the counts carried in the data itself.

Sources and the image stage turn a bad sample into a marker `{"skip": REASON, "source": i}`
instead of raising. `SkipBadIterDataset` drops the markers and hands their counts to the next
good example as `"skipped": int64[len(SKIP_REASONS)]`; the batch sums them. Elements and markers
may already carry "skipped" counts of an earlier stage (a dropped sequence of examples): they add up. Counts so travel
with the batches out of grain's worker processes, and are exact at every batch: a batch reports
the bad samples met before its last example (so those after the last good example of a finite
evaluation pass go unreported). The trainer adds them up (`SkipTotals`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

SKIP_REASONS = (
    "corrupt_image",    # bytes that do not decode (truncated, garbage, unsupported, too large)
    "missing_image",    # a folder row whose file is missing, a shard sample with no image member
    "not_an_image",     # a shard sample whose only payload is some other file (.pdf, .bin, ...)
    "empty_caption",    # no caption, or only whitespace
    "bad_record",       # an undecodable record (msgpack, JSON line, CSV row)
    "empty_shard",      # a tar shard with no sample, or not a tar at all (counted once per shard)
    "truncated_shard",  # a tar shard cut short: the sample at the cut (later samples are unseen)
    "empty_answer",     # a question-answer record without a question or an answer (or not text)
    "short_document",   # an interleaved document with fewer chunks than one sequence (data.chunks)
    # Chunked formats; once per dropped unit: a record, a document's window, a grouped sequence.
    "too_long",         # more tokens than data.max_len: cutting it would drop an image or an answer
    "special_token_in_text",  # a caption, question or answer holding a literal "<image>" or "<eoc>"
    "bad_conversation",  # not alternating user / assistant turns of text, or several <image> (conversations.py)
  "bad_box",          # data.format="locca": an object box not 4 numbers in [0, 1] with x0 < x1, y0 < y1, or no text
)
SKIPPED_KEY = "_skipped"  # the host-side batch field; the trainer pops it before device transfer


def marker(reason: str, source: int = 0, **extra) -> dict:
  assert reason in SKIP_REASONS, reason
  return {"skip": reason, "source": source, **extra}


def is_marker(element: Mapping) -> bool:
  return "skip" in element


def counts_dict(counts: np.ndarray | Sequence[int]) -> dict[str, int]:
  return {r: int(c) for r, c in zip(SKIP_REASONS, counts) if c}


class SkipBadIterDataset(grain.IterDataset):
  """Drops skip markers; each emitted example carries `"skipped"`: the markers since the last one.

  Hand-written because grain's `filter` drops elements without a trace, and the count has to
  leave the worker processes with the data. A source that yields no good example raises instead
  of spinning: after `max_bad[i]` consecutive bad elements of source i, or `max_bad_shards[i]`
  consecutive shard ends (elements flagged `shard_end`) with none good in between, or, when the
  stream is finite, at its end if nothing at all was emitted.
  """

  def __init__(self, parent: grain.IterDataset, names: Sequence[str], max_bad: Sequence[int | None],
               max_bad_shards: Sequence[int | None]):
    super().__init__(parent)
    self.names, self.max_bad, self.max_bad_shards = list(names), list(max_bad), list(max_bad_shards)

  def __iter__(self) -> grain.DatasetIterator:
    return _SkipBadIterator(self._parent.__iter__(), self)

  def __str__(self) -> str:
    return f"SkipBadIterDataset(sources={self.names})"


class _SkipBadIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, ds: SkipBadIterDataset):
    super().__init__(parent)
    self._ds = ds
    n = len(ds.names)
    self._bad_streak, self._shard_streak = [0] * n, [0] * n
    self._emitted = False

  def __next__(self) -> dict:
    counts = np.zeros(len(SKIP_REASONS), np.int64)
    while True:
      try:
        element = next(self._parent)
      except StopIteration:
        if not self._emitted:
          raise ValueError(self._empty_message(None, counts)) from None
        raise
      source = element.get("source", 0)
      if "skipped" in element:
        counts += element["skipped"]
      if not is_marker(element):
        self._bad_streak[source] = self._shard_streak[source] = 0
        self._emitted = True
        out = {k: v for k, v in element.items() if k not in ("source", "shard_end")}
        out["skipped"] = counts
        return out
      counts[SKIP_REASONS.index(element["skip"])] += 1
      self._bad_streak[source] += 1
      self._shard_streak[source] += bool(element.get("shard_end"))
      limit, shard_limit = self._ds.max_bad[source], self._ds.max_bad_shards[source]
      if (limit and self._bad_streak[source] >= limit) or (
          shard_limit and self._shard_streak[source] >= shard_limit):
        raise ValueError(self._empty_message(source, counts))

  def _empty_message(self, source: int | None, counts: np.ndarray) -> str:
    what = "the data source" if source is None else f"data source {self._ds.names[source]}"
    hint = " (too_long: raise data.max_len or lower data.chunks)" if counts[SKIP_REASONS.index("too_long")] else ""
    return (f"{what} yielded no usable example (skipped so far: {counts_dict(counts) or 'none'}); "
            f"check data.path, data.split, data.image_key and data.caption_key{hint}")

  # The pending count is always 0 between `__next__` calls, so the parent's state is the whole
  # state. The streaks restart on resume, which only delays the empty-source error.
  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state)
    self._emitted = True  # a stream resumed from a saved position has yielded examples before


class SkipTotals:
  """Host-side running totals per reason: the trainer's view of `data/skipped`."""

  def __init__(self, base: Mapping[str, int] | None = None):
    base = base or {}
    unknown = sorted(set(base) - set(SKIP_REASONS))
    if unknown:
      raise ValueError(f"skip reasons {unknown} are unknown; valid: {list(SKIP_REASONS)}")
    self.base = np.array([int(base.get(r, 0)) for r in SKIP_REASONS], np.int64)
    self.local = np.zeros(len(SKIP_REASONS), np.int64)
    self.seen = False  # whether the pipeline reports skips at all (shapes does not)
    self._warned_total, self._warned_step = int(self.base.sum()), None

  def pop(self, batch: dict) -> dict:
    """Removes SKIPPED_KEY from a host batch, adding it to the local totals."""
    counts = batch.pop(SKIPPED_KEY, None)
    if counts is not None:
      self.seen = True
      self.local += np.asarray(counts, np.int64)
    return batch

  def totals(self, local_sum=None) -> dict[str, int]:
    """Totals over all hosts: `local_sum` sums `self.local` over processes (identity on one host)."""
    local = self.local if local_sum is None else np.asarray(local_sum(self.local), np.int64)
    return {r: int(c) for r, c in zip(SKIP_REASONS, self.base + local)}

  def warning(self, step: int, totals: Mapping[str, int], every: int = 500, last: bool = False) -> str | None:
    """A reason breakdown when the total grew: at once the first time, then at most once every
    `every` steps, and at the `last` step."""
    total = sum(totals.values())
    recent = self._warned_step is not None and step - self._warned_step < every
    if total <= self._warned_total or (recent and not last):
      return None
    self._warned_total, self._warned_step = total, step
    breakdown = ", ".join(f"{r}: {c}" for r, c in totals.items() if c)
    return f"data: {total} bad sample(s) skipped by step {step} ({breakdown})"
