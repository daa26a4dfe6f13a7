"""An index directory: its manifest, its shards while it is being made, its final arrays.

OUT/manifest.json names the index (INDEX_KEYS: workdir and checkpoint step, source and its item
count, dtype, shard size); a run with other values, or an OUT holding other files, is refused before
anything is written. While indexing, shard k is OUT/shard-NNNNN.npy (its embeddings) and
OUT/shard-NNNNN.json (its ids and skipped items), each written under a temporary name and renamed,
the .json last: a shard is finished exactly when its .json exists. When all are, `finish` writes
OUT/embeddings.npy ([count, E], memory-mapped by queries) and OUT/ids.json, then the manifest with
complete=true, width and count, and removes the shards.
"""

from __future__ import annotations

import collections
import glob
import json
import os

import numpy as np

from vljax.capfilt.job import read_json, write_json  # the same atomic JSON files as CapFilt's jobs

MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
IDS = "ids.json"
VERSION = 1
INDEX_KEYS = ("version", "workdir", "step", "source", "items", "dtype", "shard_size")
DTYPES = ("float32", "float16")


def write_npy(path: str, array: np.ndarray) -> None:
  """Atomically, as write_json: a reader sees the old file or the whole new one."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    np.save(f, array)
  os.replace(tmp, path)


def read_manifest(out: str) -> dict | None:
  return read_json(os.path.join(out, MANIFEST))


def _ours(name: str) -> bool:
  return name.startswith((MANIFEST, EMBEDDINGS, IDS, "shard-"))  # temporary files of a killed run too


def open_out(out: str, index: dict) -> dict:
  """Checks OUT against the index (new, empty, or this index's own) and writes the manifest of a new
  one; returns the manifest on disk."""
  saved = read_manifest(out)
  if saved is not None:
    diff = [k for k in INDEX_KEYS if saved.get(k) != index.get(k)]
    if diff:
      changes = "; ".join(f"{k}: {saved.get(k)!r} there, {index.get(k)!r} now" for k in diff)
      raise ValueError(f"--index {out!r} holds another index ({changes}); rerun with its settings to resume, "
                       "or give a new directory")
    return saved
  if os.path.isdir(out) and os.listdir(out):
    others = sorted(os.listdir(out))
    what = "index files without a manifest" if all(map(_ours, others)) else "other files"
    raise ValueError(f"--index {out!r} holds {what} ({', '.join(others[:5])}{' ...' * (len(others) > 5)}); "
                     "give an empty or new directory")
  os.makedirs(out, exist_ok=True)
  manifest = {**index, "complete": False}
  write_json(os.path.join(out, MANIFEST), manifest)
  return manifest


def shard_path(out: str, shard: int, suffix: str) -> str:
  """OUT/shard-NNNNN<suffix>: ".npy" or ".json"."""
  return os.path.join(out, f"shard-{shard:05d}{suffix}")


def is_done(out: str, shard: int) -> bool:
  return os.path.isfile(shard_path(out, shard, ".json"))


def write_shard(out: str, shard: int, embeddings: np.ndarray, ids: list[str], skipped: dict[str, int]) -> None:
  """The embeddings first, the ids and skip counts last (the shard's done marker)."""
  write_npy(shard_path(out, shard, ".npy"), embeddings)
  write_json(shard_path(out, shard, ".json"), {"ids": ids, "skipped": dict(sorted(skipped.items()))})


def _read_shard(out: str, shard: int) -> tuple[np.ndarray, dict]:
  with open(shard_path(out, shard, ".json"), encoding="utf-8") as f:
    meta = json.load(f)
  return np.load(shard_path(out, shard, ".npy"), mmap_mode="r"), meta


def finish(out: str, manifest: dict, num_shards: int) -> dict:
  """Joins the finished shards into OUT/embeddings.npy and OUT/ids.json (shard by shard: memory stays
  that of one shard), writes the complete manifest, removes the shards; returns the manifest."""
  shards = [_read_shard(out, k) for k in range(num_shards)]
  count = sum(len(meta["ids"]) for _, meta in shards)
  if not count:
    raise ValueError(f"--images {manifest['source']!r}: none of its {manifest['items']} images could be read")
  shape = next(a.shape[1:] for a, meta in shards if meta["ids"])
  tmp = os.path.join(out, f"{EMBEDDINGS}.tmp{os.getpid()}")
  joined = np.lib.format.open_memmap(tmp, "w+", np.dtype(manifest["dtype"]), (count, *shape))
  start, ids, skipped = 0, [], collections.Counter()
  for array, meta in shards:
    if meta["ids"]:  # a shard of unreadable files alone holds an empty array of no width
      joined[start:start + len(meta["ids"])] = array
    start += len(meta["ids"])
    ids += meta["ids"]
    skipped.update(meta["skipped"])
  joined.flush()
  del joined
  os.replace(tmp, os.path.join(out, EMBEDDINGS))
  write_json(os.path.join(out, IDS), ids)
  manifest = {**manifest, "complete": True, "count": count, "width": int(shape[-1]),
              "queries_per_image": int(shape[0]) if len(shape) == 2 else None,
              "skipped": dict(sorted(skipped.items()))}
  write_json(os.path.join(out, MANIFEST), manifest)
  for path in glob.glob(os.path.join(out, "shard-*")):
    os.remove(path)
  return manifest


def open_index(out: str) -> tuple[dict, np.ndarray, list[str]]:
  """(manifest, embeddings memory-mapped [count, E], ids) of a complete index."""
  manifest = read_manifest(out)
  if manifest is None:
    raise FileNotFoundError(f"--index {out!r} holds no index ({MANIFEST} is missing); make one with "
                            "`python -m vljax.search index`")
  if not manifest.get("complete"):
    done = len(glob.glob(os.path.join(out, "shard-*.json")))
    raise ValueError(f"--index {out!r} is incomplete ({done} shard(s) of {manifest['items']} images finished); "
                     "rerun the same `index` command to finish it")
  with open(os.path.join(out, IDS), encoding="utf-8") as f:
    ids = json.load(f)
  return manifest, np.load(os.path.join(out, EMBEDDINGS), mmap_mode="r"), ids
