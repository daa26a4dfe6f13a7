"""The index job: a source's images embedded in batches, shard by shard (each written atomically,
finished ones skipped on restart), then joined into one array (vljax/search/store.py)."""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np
from tqdm import tqdm

from vljax.capfilt import job as job_lib
from vljax.data import images as images_lib
from vljax.search import model as model_lib, sources, store


@dataclasses.dataclass(frozen=True)
class Settings:
  """An index job (batch size and progress do not change which index it is)."""

  workdir: str
  images: str
  index: str
  shard_size: int = 1000
  batch_size: int = 256
  # float32 by default: exact scores, and CPU BLAS has no float16 product (a query would convert
  # every chunk); float16 halves the disk and page cache of a large index at ~1e-3 score error.
  dtype: str = "float32"

  def validate(self) -> None:
    """ValueError naming the first bad setting, its value and what is valid."""
    checks = ((self.shard_size >= 1, "shard_size", ">= 1"), (self.batch_size >= 1, "batch_size", ">= 1"),
              (self.dtype in store.DTYPES, "dtype", f"one of {list(store.DTYPES)}"))
    for ok, name, valid in checks:
      if not ok:
        raise ValueError(f"--{name}={getattr(self, name)!r} is invalid; valid: {valid}")


def plan(settings: Settings) -> tuple[dict, model_lib.Run, sources.FolderImages | sources.ShapesImages]:
  """Everything checked, nothing written: (the index's identity, the run, the source). A resumed
  index keeps the checkpoint step it started with."""
  settings.validate()
  saved = store.read_manifest(settings.index)
  same_run = saved is not None and saved.get("workdir") == job_lib.absolute(settings.workdir)
  run = model_lib.open_run(settings.workdir, saved["step"] if same_run else None)
  source = sources.open_images(settings.images, run.cfg.data)
  index = {"version": store.VERSION, "workdir": job_lib.absolute(settings.workdir), "step": run.step,
           "source": source.spec, "items": len(source), "dtype": settings.dtype, "shard_size": settings.shard_size}
  return index, run, source


def embed_shard(embedder: model_lib.Embedder, source, items: range, dtype: str, bar: tqdm
                ) -> tuple[np.ndarray, list[str], collections.Counter]:
  """(embeddings of the items that read, their ids, skipped items by reason)."""
  out, ids, batch, skipped = [], [], [], collections.Counter()

  def flush():
    out.append(embedder.images(np.stack(batch)).astype(dtype))
    batch.clear()

  for i in items:
    try:
      batch.append(source.read(i))
      ids.append(source.ids[i])
    except images_lib.CorruptImageError:
      skipped["corrupt_image"] += 1
    except FileNotFoundError:  # removed since the listing
      skipped["missing_image"] += 1
    bar.update(1)
    if len(batch) == embedder.batch_size:
      flush()
  if batch:
    flush()
  return (np.concatenate(out) if out else np.zeros((0,), dtype)), ids, skipped


def run(settings: Settings, progress: bool = True) -> dict:
  """Makes (or resumes, or finds complete) the index; returns its manifest."""
  index, run_, source = plan(settings)
  manifest = store.open_out(settings.index, index)
  if manifest["complete"]:
    return manifest
  size = settings.shard_size
  num_shards = math.ceil(len(source) / size)
  todo = [k for k in range(num_shards) if not store.is_done(settings.index, k)]
  if todo:
    embedder = model_lib.Embedder(run_, settings.batch_size)
    shards = {k: range(k * size, min(len(source), (k + 1) * size)) for k in todo}
    with tqdm(total=sum(map(len, shards.values())), desc=f"index {source.description}", unit=" images",
              disable=not progress) as bar:
      for k, items in shards.items():
        store.write_shard(settings.index, k, *embed_shard(embedder, source, items, settings.dtype, bar))
  return store.finish(settings.index, manifest, num_shards)
