"""A CapFilt job: its settings, its output directory (the job file, shard files written atomically)
and the split of its shards over hosts.

DIR/capfilt.json names the job: the settings that decide the output (runs and their checkpoint
steps, input, decoding, threshold, seed, shard size). A restart with the same settings resumes;
other settings, or a DIR holding files of something else, are refused before anything is written.
Shard k is DIR/shard-k.array_record (its kept pairs; absent when none was kept), DIR/shard-k.jsonl
(every caption) and DIR/shard-k.done.json (its counts), each written under a temporary name and
renamed; the .done.json comes last, so a shard is finished exactly when it exists.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import os
from typing import Any

JOB_FILE = "capfilt.json"
SUMMARY_FILE = "summary.json"
TMP_DIR = ".tmp"
JOB_VERSION = 1
PROVENANCES = ("web", "synthetic")
DECISIONS = ("kept", "removed")


@dataclasses.dataclass(frozen=True)
class Settings:
  """What decides the output (batch size and progress do not)."""

  captioner: str
  filter: str
  input: str
  captions_per_image: int = 1
  top_p: float = 0.9
  temperature: float = 1.0
  max_len: int = 0  # generated tokens, EOS included; 0: the captioner's text max_len - 1
  threshold: float = 0.5
  seed: int = 0
  shard_size: int = 1000  # images per shard of a random-access input (a tar input: one shard per file)
  image_key: str = "image"
  caption_key: str = "caption"

  def validate(self) -> None:
    """ValueError naming the first bad setting, its value and what is valid."""
    checks = (
        (self.captions_per_image >= 0, "captions_per_image", ">= 1, or 0 to filter the web captions alone"),
        (0 < self.top_p <= 1, "top_p", "in (0, 1]"),
        (self.temperature > 0, "temperature", "> 0"),
        (self.max_len >= 0, "max_len", ">= 1, or 0 for the captioner's text max_len - 1"),
        (0 <= self.threshold <= 1, "threshold", "a match probability in [0, 1]"),
        (self.shard_size >= 1, "shard_size", ">= 1"),
    )
    for ok, name, valid in checks:
      if not ok:
        raise ValueError(f"--{name}={getattr(self, name)!r} is invalid; valid: {valid}")


def absolute(path: str) -> str:
  """Local paths made absolute (a job resumed from another directory is the same job)."""
  return path if "://" in path else os.path.abspath(path)


def host_shards(num_shards: int, process_index: int, process_count: int) -> list[int]:
  """The shards process `process_index` of `process_count` writes: k with k % count == index (a host
  gets none when there are fewer shards than hosts)."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} of process_count={process_count}: need "
                     "0 <= process_index < process_count")
  if num_shards < 0:
    raise ValueError(f"num_shards={num_shards} must be >= 0")
  return list(range(process_index, num_shards, process_count))


def shard_path(output: str, shard: int, suffix: str) -> str:
  """DIR/shard-NNNNN<suffix>: ".array_record", ".jsonl" or ".done.json"."""
  return os.path.join(output, f"shard-{shard:05d}{suffix}")


def is_done(output: str, shard: int) -> bool:
  return os.path.isfile(shard_path(output, shard, ".done.json"))


def write_json(path: str, value: Any) -> None:
  """Atomically: a reader sees the old file or the whole new one."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def _ours(name: str) -> bool:
  return name in (JOB_FILE, SUMMARY_FILE, TMP_DIR) or name.startswith("shard-")


def read_json(path: str) -> dict | None:
  """The JSON file at `path` (write_json's), or None when there is none."""
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def read_job(output: str) -> dict | None:
  """The job file of DIR, or None."""
  return read_json(os.path.join(output, JOB_FILE))


def open_output(output: str, job: dict) -> None:
  """Checks DIR against the job (a new or empty DIR, or this job's own) and writes the job file."""
  saved = read_job(output)
  if saved is not None:
    diff = sorted(k for k in set(saved) | set(job) if saved.get(k) != job.get(k))
    if diff:
      changes = "; ".join(f"{k}: {saved.get(k)!r} there, {job.get(k)!r} now" for k in diff)
      raise ValueError(f"--output {output!r} holds another CapFilt job ({changes}); resume with the same "
                       "settings or give a new directory")
    return
  if os.path.isdir(output):
    others = sorted(os.listdir(output))
    if others:
      what = "CapFilt shards without its job file" if all(map(_ours, others)) else "other files"
      raise ValueError(f"--output {output!r} holds {what} ({', '.join(others[:5])}{' ...' * (len(others) > 5)}); "
                       "give an empty or new directory")
  os.makedirs(output, exist_ok=True)
  write_json(os.path.join(output, JOB_FILE), job)


def finished_counts(output: str) -> list[dict]:
  """The .done.json of every finished shard, in shard order."""
  out = []
  for path in sorted(glob.glob(os.path.join(output, "shard-*.done.json"))):
    with open(path, encoding="utf-8") as f:
      out.append(json.load(f))
  return out


def summarize(output: str, num_shards: int) -> dict:
  """Counts over the finished shards: images, skipped by reason, captions by provenance x decision."""
  done = finished_counts(output)
  counts = {p: {d: sum(c["counts"][p][d] for c in done) for d in DECISIONS} for p in PROVENANCES}
  skipped = collections.Counter()
  for c in done:
    skipped.update(c["skipped"])
  return {"shards_done": len(done), "shards": num_shards, "complete": len(done) == num_shards,
          "images": sum(c["images"] for c in done), "skipped": dict(sorted(skipped.items())),
          "records": sum(counts[p]["kept"] for p in PROVENANCES), "counts": counts}


def counts_table(summary: dict) -> str:
  """Captions by provenance x decision, as printed at the end."""
  lines = [f"{'':<10}{'kept':>9}{'removed':>9}{'kept %':>8}"]
  for p in PROVENANCES:
    kept, removed = (summary["counts"][p][d] for d in DECISIONS)
    share = f"{100 * kept / (kept + removed):.1f}" if kept + removed else "-"
    lines.append(f"{p:<10}{kept:>9}{removed:>9}{share:>8}")
  skipped = summary["skipped"]
  lines.append(f"images: {summary['images']} in {summary['shards_done']}/{summary['shards']} shard(s); "
               f"skipped: {sum(skipped.values())}" + "".join(f", {r}: {c}" for r, c in skipped.items()))
  return "\n".join(lines)
