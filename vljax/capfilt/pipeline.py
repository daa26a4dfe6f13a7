"""The CapFilt job: for each shard of the input, the captioner's synthetic captions, the filter's
match probability of every caption (web and synthetic), the kept pairs as ArrayRecords and every
caption in a JSONL; shards written atomically, finished ones skipped on restart, split over hosts."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import shutil
import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from vljax import decode as decode_lib
from vljax.capfilt import inputs, job as job_lib, models
from vljax.data import images as images_lib
from vljax.data.sources import examples, records, skips

RECORDS_PER_FILE = 2**40  # one ArrayRecord file per shard


def web_captions(value) -> list[str]:
  """A record's caption field -> its non-empty texts (one, several or none)."""
  values = value if isinstance(value, (list, tuple)) else [value]
  return [t for t in (examples.pick_caption(v, None) for v in values) if t]


@dataclasses.dataclass
class Image:
  index: tuple[int, ...]
  key: str
  data: bytes
  web: list[str]
  pixels: dict[str, np.ndarray]  # role -> preprocessed


class ShardWriter:
  """One shard's files under a temporary directory, renamed into place by `commit`."""

  def __init__(self, output: str, shard: int):
    self.output, self.shard = output, shard
    self.tmp = os.path.join(output, job_lib.TMP_DIR, f"shard-{shard:05d}.{os.getpid()}")
    self.records = records.RecordWriter(self.tmp, RECORDS_PER_FILE)
    self.jsonl = open(os.path.join(self.tmp, "captions.jsonl"), "w", encoding="utf-8")
    self.images, self.skipped = 0, collections.Counter()
    self.counts = {p: {d: 0 for d in job_lib.DECISIONS} for p in job_lib.PROVENANCES}

  def add(self, image: Image, caption: str, provenance: str, number: int, score: float, keep: bool) -> None:
    decision = "kept" if keep else "removed"
    self.counts[provenance][decision] += 1
    if keep:
      self.records.write_packed(records.pack({"key": f"{image.key}#{provenance}{number}", "image": image.data,
                                              "caption": caption, "provenance": provenance, "itm_score": score}))
    row = {"image": image.key, "index": list(image.index), "caption": caption, "provenance": provenance,
           "itm_score": score, "decision": decision}
    self.jsonl.write(json.dumps(row) + "\n")

  def commit(self) -> dict:
    """Renames the files into place, the counts last; returns the counts."""
    paths = self.records.close()
    self.jsonl.close()
    if paths:
      os.replace(paths[0], job_lib.shard_path(self.output, self.shard, records.SUFFIX))
    os.replace(self.jsonl.name, job_lib.shard_path(self.output, self.shard, ".jsonl"))
    done = {"shard": self.shard, "images": self.images, "skipped": dict(sorted(self.skipped.items())),
            "counts": self.counts}
    job_lib.write_json(job_lib.shard_path(self.output, self.shard, ".done.json"), done)
    shutil.rmtree(self.tmp, ignore_errors=True)
    return done


class CapFilt:
  """A job's runs, input and settings; `run_shard` writes one shard."""

  def __init__(self, settings: job_lib.Settings, output: str, source: inputs.Input, captioner: models.Run,
               filter_run: models.Run, options: decode_lib.DecodeOptions):
    self.settings, self.output, self.source = settings, output, source
    self.captioner, self.filter, self.options = captioner, filter_run, options
    self.batch_size = captioner.runner.chunk
    # A run whose preprocessing is the captioner's reads the captioner's pixels.
    self.roles = {"captioner": captioner}
    if filter_run.preprocessing != captioner.preprocessing:
      self.roles["filter"] = filter_run

  def _image(self, item: inputs.Item) -> Image | str:
    """The record as an Image, or its skip reason."""
    record = item.record
    if skips.is_marker(record):
      return record["skip"]
    try:
      pixels = {role: run.preprocess(record["image"]) for role, run in self.roles.items()}
    except images_lib.CorruptImageError:
      return "corrupt_image"
    return Image(item.index, str(record.get("key", item.index)), bytes(record["image"]), web_captions(
        record.get("caption")), pixels)

  def _pixels(self, batch: list[Image], role: str) -> np.ndarray:
    return np.stack([im.pixels.get(role, im.pixels["captioner"]) for im in batch])

  def _flush(self, batch: list[Image], writer: ShardWriter) -> None:
    n = self.settings.captions_per_image
    keys = models.caption_keys(self.settings.seed, [im.index for im in batch], n)
    synthetic = models.sample_captions(self.captioner, np.repeat(self._pixels(batch, "captioner"), n, axis=0), keys,
                                       self.options) if n else []
    rows = []  # (image, caption, provenance, its number among the image's captions of that provenance)
    for b, im in enumerate(batch):
      rows += [(b, text, "web", j) for j, text in enumerate(im.web)]
      rows += [(b, text, "synthetic", j) for j, text in enumerate(synthetic[b * n:(b + 1) * n])]
    scores = models.match_probs(self.filter, self._pixels(batch, "filter"), np.array([r[0] for r in rows]),
                                [r[1] for r in rows])
    for (b, text, provenance, j), score in zip(rows, scores.tolist()):
      writer.add(batch[b], text, provenance, j, score, keep=bool(text) and score >= self.settings.threshold)

  def run_shard(self, shard: int, bar: tqdm) -> dict:
    writer = ShardWriter(self.output, shard)
    batch: list[Image] = []
    for item in self.source.items(shard):
      image = self._image(item)
      bar.update(1)
      if isinstance(image, str):
        writer.skipped[image] += 1
        continue
      writer.images += 1
      batch.append(image)
      if len(batch) == self.batch_size:
        self._flush(batch, writer)
        batch = []
    if batch:
      self._flush(batch, writer)
    return writer.commit()


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def plan(settings: job_lib.Settings, output: str, batch_size: int) -> tuple[dict, inputs.Input, models.Run,
                                                                              models.Run, decode_lib.DecodeOptions]:
  """Everything checked, nothing written: (the job, input, runs without params, decode options)."""
  settings.validate()
  if batch_size < 1:
    raise ValueError(f"--batch_size={batch_size} is invalid; valid: >= 1")
  saved = job_lib.read_job(output)
  steps = {}
  for role in models.ROLES:
    same = saved and saved.get(role) == job_lib.absolute(getattr(settings, role))
    steps[role] = saved.get(f"{role}_step") if same else None
  captioner = models.open_run("captioner", settings.captioner, steps["captioner"])
  filter_run = models.open_run("filter", settings.filter, steps["filter"])
  max_len = settings.max_len or captioner.max_len - 1
  if max_len > captioner.max_len - 1:
    raise ValueError(f"--max_len={max_len} is invalid for the captioner; valid: 1..{captioner.max_len - 1} "
                     "(its text max_len, less BOS)")
  options = decode_lib.DecodeOptions(method="sample", max_len=max_len, top_p=settings.top_p,
                                     temperature=settings.temperature)
  source = inputs.Input(settings.input, settings.shard_size, settings.image_key, settings.caption_key)
  job = {"version": job_lib.JOB_VERSION, **dataclasses.asdict(settings), "max_len": max_len,
         "captioner_step": captioner.step, "filter_step": filter_run.step, "input_kind": source.kind,
         "shards": source.num_shards}
  for key in ("captioner", "filter", "input"):
    job[key] = job_lib.absolute(job[key])
  return job, source, captioner, filter_run, options


def run(settings: job_lib.Settings, output: str, batch_size: int = 64, progress: bool = True) -> dict:
  """Runs (or resumes) the job; returns the summary (also DIR/summary.json, written by process 0)."""
  job, source, captioner, filter_run, options = plan(settings, output, batch_size)
  index, count = jax.process_index(), jax.process_count()
  tmp = os.path.join(output, job_lib.TMP_DIR)
  if index == 0:
    job_lib.open_output(output, job)
    shutil.rmtree(tmp, ignore_errors=True)  # shards an interrupted run was writing: they start over
  _barrier("capfilt_output")
  if index != 0:
    job_lib.open_output(output, job)  # the job file is there now: checks it is this job's
  todo = [k for k in job_lib.host_shards(source.num_shards, index, count) if not job_lib.is_done(output, k)]
  if todo:
    mesh = models.local_mesh()
    captioner = models.loaded(captioner, mesh, batch_size)
    filter_run = models.loaded(filter_run, mesh, batch_size)
    capfilt = CapFilt(settings, output, source, captioner, filter_run, options)
    sizes = [source.shard_records(k) for k in todo]
    total = None if None in sizes else sum(sizes)
    with jax.set_mesh(mesh), tqdm(total=total, desc=f"capfilt {source.description}", unit=" images",
                                  disable=not progress) as bar:
      totals = {p: collections.Counter() for p in job_lib.PROVENANCES}
      for shard in todo:
        done = capfilt.run_shard(shard, bar)
        for p in job_lib.PROVENANCES:
          totals[p].update(done["counts"][p])
        bar.set_postfix({f"{p}_kept": f"{totals[p]['kept']}/{sum(totals[p].values())}" for p in totals})
  _barrier("capfilt_done")
  summary = job_lib.summarize(output, source.num_shards)
  if index == 0:
    job_lib.write_json(os.path.join(output, job_lib.SUMMARY_FILE), summary)
    shutil.rmtree(tmp, ignore_errors=True)
  return summary
