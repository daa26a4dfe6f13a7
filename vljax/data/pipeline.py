"""grain input pipelines: decode, augment, tokenize, batch and shard examples per host.

Shapes (data.name="shapes"): host `p` of `P` reads global examples `p, p + P, p + 2P, ...` of the
world, so the `s`-th batches of all hosts together hold examples `s*B ... s*B + B - 1` (B = global
batch) and no two hosts ever share one. Batches are built whole in grain's prefetch threads (or
worker processes), so rendering overlaps the training step. The iterator's state is grain's: a
batch index, so `get_state()`/`set_state()` resume bit-identically.

Real data (data.name in sources.SOURCE_NAMES; config keys in vljax/data/sources/__init__.py):

  random-access sources (tfds, array_record, folder):
    MapDataset.source -> shuffle(seed) -> repeat() (reshuffled every epoch) -> random_map(decode +
    crop, generator from (seed, index)) -> [p::P] -> to_iter_dataset (num_threads)
  webdataset shards:
    MapDataset.source(this host's shards) -> shuffle(seed) -> repeat() -> one TarShardDataset each
    -> InterleaveIterDataset(cycle_length) -> random_map(decode + crop)
  each source then: [documents: FlatMapIterDataset (a document -> its sequences)] ->
    SkipBadIterDataset (bad samples -> counts) -> [chunked formats, examples: batch(data.chunks)
    -> one sequence -> SkipBadIterDataset (sequences too long together -> counts)]
  mixture: the sources above -> IterDataset.mix(weights)
  then: batch(collate: normalise, tokenize, sum the skip counts into "_skipped") ->
  mp_prefetch(data.workers) or a prefetch thread.

Chunked formats ("vlm", "lm") read caption and question-answer records as chunks, data.chunks
consecutive examples of the shuffled stream to a sequence, or interleaved documents cut into
sequences of data.chunks chunks (vljax/data/sources/fields.py). Each chunk is tokenized in the
decode stage (examples.Preprocess, the format's chunk_tokens) and its ids carried to the collate:
a record, document window or sequence over data.max_len tokens is skipped as too_long, text holding
"<image>" or "<eoc>" as special_token_in_text, before they reach a batch.

Everything up to the batch runs in the `data.workers` processes. Resume is exact for every
source (grain's states: indices, interleave positions and tar byte offsets) as long as
data.workers and data.cycle_length are unchanged; the batches' composition depends on both.
Unlike shapes, hosts' states differ on real data: a multi-host resume needs every host's own
state in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from vljax.data import boxes, device_resize, formats, images, naflex, shapes, sources
from vljax.data.sources import examples, fields, skips, webdataset
from vljax.data.tokenizers import Tokenizer

DATASETS = ("shapes",) + sources.SOURCE_NAMES
DEFAULT_MAX_LEN = shapes.MAX_CAPTION_WORDS + 2
SKIPPED_KEY = skips.SKIPPED_KEY


def preprocess_images(pixels: np.ndarray) -> np.ndarray:
  """uint8 images [..., H, W, 3] -> float32 in [-1, 1]: the default ("siglip") normalisation."""
  pixels = np.asarray(pixels)
  if pixels.dtype != np.uint8:
    raise ValueError(f"preprocess_images expects uint8 pixels, got dtype {pixels.dtype}.")
  return pixels.astype(np.float32) * np.float32(2 / 255) - np.float32(1)


def check_name(data_cfg: Mapping[str, Any]) -> str:
  name = data_cfg.get("name", "shapes")
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset name {name!r}; valid names are {list(DATASETS)}.")
  return name


def resizes_on_device(data_cfg: Mapping[str, Any]) -> bool:
  """Whether training batches carry uint8 canvases the train step resizes (data.resize="device");
  checked: a real source, a format with one image per example, a canvas of at least image_size."""
  if not device_resize.check_resize(data_cfg):
    return False
  if check_name(data_cfg) == "shapes":
    raise ValueError("data.resize='device' is for real sources (their images are decoded and cropped); "
                     "the shapes world renders at data.image_size: use data.resize='host'")
  fmt = data_cfg.get("format", "caption")
  if fmt not in formats.DEVICE_RESIZE_FORMATS:
    raise ValueError(f"data.resize='device' supports data.format in {list(formats.DEVICE_RESIZE_FORMATS)}, "
                     f"not {fmt!r}")
  return True


def _canvas(data_cfg: Mapping[str, Any], train: bool) -> int:
  """The side of the canvases a real source's batches ship images in; 0: resized on the host."""
  return device_resize.canvas_size(data_cfg) if train and resizes_on_device(data_cfg) else 0


def check_data_config(data_cfg: Mapping[str, Any]) -> None:
  """Every data setting checked before any compute: names, presets, paths, keys."""
  resizes_on_device(data_cfg)
  images.check_jpeg_decoder(data_cfg.get("jpeg_decoder", "pil"))
  if check_name(data_cfg) == "shapes":
    images.check_normalization(data_cfg.get("normalization", "siglip"))
    sources.check_chunks(data_cfg)
  else:
    sources.check(data_cfg)
  if int(data_cfg.get("workers", 0)) < 0:
    raise ValueError(f"data.workers={data_cfg.get('workers')} must be >= 0")
  naflex.check_data(data_cfg)  # data.naflex: vljax/data/naflex.py
  locca_tasks(data_cfg)


def locca_tasks(data_cfg: Mapping[str, Any]) -> tuple:
  """The checked LocCa task mix of a format that reads boxes (data.locca, vljax/data/boxes.py); () otherwise."""
  if not formats.get_format(data_cfg.get("format", "caption")).reads_boxes:
    return ()
  return boxes.check_settings(data_cfg)


# Runs of seed s read the shapes training split from index s * TRAIN_SEED_STRIDE: the same world and
# evaluation sets (data.world_seed), other training examples.
TRAIN_SEED_STRIDE = 2**32


def make_world(data_cfg: Mapping[str, Any]) -> shapes.ShapesWorld:
  """The shapes world a data config describes (also what evaluators render from, whatever the
  training source). Its seed is data.world_seed, not the run's seed: runs that differ only in seed
  are evaluated on the same examples."""
  check_name(data_cfg)
  world_seed = data_cfg.get("world_seed", 0)
  if not isinstance(world_seed, int) or world_seed < 0:
    raise ValueError(f"data.world_seed={world_seed!r} must be an integer >= 0")
  return shapes.ShapesWorld(seed=world_seed, image_size=data_cfg.get("image_size", 64),
                            caption_noise=data_cfg.get("caption_noise", 0.0),
                            min_objects=data_cfg.get("min_objects", 1),
                            max_objects=data_cfg.get("max_objects", 3))


class _Sequences:
  """Example i = source examples i*chunks ... i*chunks + chunks - 1 (random access, like the source)."""

  def __init__(self, source, chunks: int):
    self.source, self.chunks = source, chunks

  def __len__(self) -> int:
    return len(self.source) // self.chunks

  def __getitem__(self, index: int) -> list[dict]:
    return [self.source[index * self.chunks + j] for j in range(self.chunks)]


class _PaintThenCollate:
  """A batch of shapes examples (sequences of them, in chunked formats) whose images are sketches ->
  the same examples with their pixels, painted in one call -> the format's collate."""

  def __init__(self, world: shapes.ShapesWorld, collate):
    self.world, self.collate = world, collate

  def __call__(self, batch: Sequence[Any]) -> dict[str, np.ndarray]:
    flat = [ex for item in batch for ex in (item if isinstance(item, list) else [item])]
    sketched = [ex for ex in flat if isinstance(ex.get("image"), shapes.Sketch)]
    for ex, pixels in zip(sketched, self.world.paint([ex["image"] for ex in sketched])):
      ex["image"] = pixels
    return self.collate(batch)


def batch_ndims(data_format: str, device_resize: bool = False) -> dict[str, int]:
  """Rank of each array in a batch of `data_format` (training batches resized on the device add
  their crops' boxes): what the train step's shardings follow."""
  fields = dict(formats.get_format(data_format).fields)
  return {**fields, images.BOX_KEY: 2} if device_resize else fields


def check_format(data_format: str) -> formats.BatchFormat:
  return formats.get_format(data_format)


def _check_hosts(global_batch_size: int, process_index: int, process_count: int) -> int:
  """This host's share of the global batch."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count}).")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                     f"process_count={process_count}.")
  return global_batch_size // process_count


def make_train_dataset(data_cfg: Mapping[str, Any], tokenizer: Tokenizer, *, global_batch_size: int,
                       seed: int, process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """This host's infinite stream of training batches; `iter()` it and checkpoint the iterator.

  data_cfg keys: name ("shapes", or a real source: see vljax/data/sources), format (a batch format:
  vljax/data/formats), vqa_fraction (0.5: the share of question-answer chunks in chunked formats,
  "lm" / "vlm"), conversation_fraction (0.0: that of multi-turn conversations there,
  vljax/data/conversations.py), chunks (1: chunks per sequence of a chunked format), image_size (64), max_len (24),
  normalization ("siglip": pixels in [-1, 1]), caption_noise (0.0), min_objects/max_objects (1/3),
  num_threads (2), prefetch (4 batches), workers (0 = threads only; > 0 renders in that many
  processes). Real sources add the "_skipped" field (SKIPPED_KEY) to every batch; their chunked
  formats take question-answer records and documents instead of vqa_fraction (sources/fields.py).
  """
  local_batch = _check_hosts(global_batch_size, process_index, process_count)
  if check_name(data_cfg) != "shapes":
    return _real_dataset(data_cfg, tokenizer, local_batch=local_batch, seed=seed, process_index=process_index,
                         process_count=process_count, train=True)
  if not isinstance(seed, int) or seed < 0:
    raise ValueError(f"seed={seed!r} must be an integer >= 0")
  world = make_world(data_cfg)
  fmt = check_format(data_cfg.get("format", "caption"))
  normalization = data_cfg.get("normalization", "siglip")
  images.check_normalization(normalization)
  # Question-answer and conversation chunks only in chunked sequences: a caption format trains on captions.
  vqa_fraction = data_cfg.get("vqa_fraction", 0.5) if fmt.chunked else 0.0
  conversation_fraction = data_cfg.get("conversation_fraction", 0.0) if fmt.chunked else 0.0
  # Examples carry sketches; their batch is painted at once (_PaintThenCollate), a fraction of the cost.
  source = shapes.ShapesSource(world, "train", vqa_fraction=vqa_fraction, render="sketch" if fmt.renders else False,
                               start=seed * TRAIN_SEED_STRIDE, conversation_fraction=conversation_fraction,
                               boxes=fmt.reads_boxes)
  naflex_cfg = naflex.check_data(data_cfg)
  if naflex_cfg and naflex_cfg["aspect"]:  # each example its own aspect ratio
    source = naflex.AspectSource(source, naflex_cfg["aspect"])
  sources.check_chunks(data_cfg)
  if fmt.chunked:
    source = _Sequences(source, int(data_cfg.get("chunks", 1)))
  ds = grain.MapDataset.source(source)
  ds = ds[process_index::process_count]
  settings = formats.CollateSettings(tokenizer, data_cfg.get("max_len", DEFAULT_MAX_LEN), normalization,
                                     locca_tasks=locca_tasks(data_cfg))
  collate = fmt.collate(settings)
  if naflex_cfg:  # images packed to the token budget
    collate = naflex.NaflexCollate(collate, naflex_cfg, normalization)
  ds = ds.batch(local_batch, drop_remainder=True, batch_fn=_PaintThenCollate(world, collate))
  read_options = grain.ReadOptions(num_threads=data_cfg.get("num_threads", 2),
                                   prefetch_buffer_size=data_cfg.get("prefetch", 4))
  it_ds = ds.to_iter_dataset(read_options)
  workers = data_cfg.get("workers", 0)
  if workers:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return it_ds


def make_eval_dataset(data_cfg: Mapping[str, Any], tokenizer: Tokenizer, *, global_batch_size: int,
                      process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """One pass over a real source in order: center crops, the first caption, a short last batch.

  Read in threads (data.workers is for training). Batches carry SKIPPED_KEY like training's.
  """
  local_batch = _check_hosts(global_batch_size, process_index, process_count)
  if check_name(data_cfg) in ("shapes", "mixture"):
    raise ValueError(f"make_eval_dataset reads one real source, not data.name={data_cfg.get('name')!r}")
  return _real_dataset(data_cfg, tokenizer, local_batch=local_batch, seed=0, process_index=process_index,
                       process_count=process_count, train=False)


class _RealCollate:
  """Examples (sequences of a chunked format) -> a batch of the data format, plus "_skipped": int64 [R]."""

  def __init__(self, fmt: formats.BatchFormat, settings: formats.CollateSettings):
    self.fmt, self.settings = fmt, settings

  def enable_shared_memory_output(self) -> None:
    """Called by grain in each worker process: the images are then written where the trainer reads
    them, not built in the worker and copied into shared memory after."""
    self.settings = dataclasses.replace(self.settings, shared_memory=True)

  def __call__(self, batch: Sequence[dict]) -> dict[str, np.ndarray]:
    examples = [ex["chunks"] for ex in batch] if self.fmt.chunked else batch
    return {**self.fmt.collate_fn(self.settings, examples),
            SKIPPED_KEY: np.sum([ex["skipped"] for ex in batch], axis=0, dtype=np.int64)}


def _sequence_of_examples(max_len: int, chunk_examples: Sequence[dict]) -> dict:
  """data.chunks consecutive examples -> one sequence carrying the skip counts of all, or, when their
  tokens together exceed max_len, a too_long marker carrying them (each example fits alone)."""
  skipped = np.sum([ex["skipped"] for ex in chunk_examples], axis=0, dtype=np.int64)
  chunks = [{k: v for k, v in ex.items() if k != "skipped"} for ex in chunk_examples]
  if not examples.fits(chunks, max_len):
    return skips.marker("too_long", skipped=skipped)
  return {"chunks": chunks, "skipped": skipped}


class _DocumentSequences(grain.experimental.FlatMapTransform):
  """A preprocessed document -> its sequences (examples.Preprocess cut them), a window it could not
  make a row of -> a marker of its reason; markers pass through."""

  max_fan_out = 2**31 - 1  # read by FlatMapMapDataset only; a document has as many sequences as it has

  def flat_map(self, element: dict) -> list[dict]:
    if skips.is_marker(element):
      return [element]
    return [skips.marker(window, element["source"]) if isinstance(window, str) else
            {"chunks": window, "source": element["source"]} for window in element["windows"]]


def source_seed(seed: int, index: int) -> int:
  """A grain seed (< 2**32) per mixture component, decorrelated from the others."""
  return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def shard_sequence(shards: Sequence[str], seed: int, train: bool = True) -> grain.MapDataset:
  """The order a host reads its tar shards in: reshuffled every epoch and endless when training
  (`seed`: source_seed(run seed, source index))."""
  ds = grain.MapDataset.source(list(shards))
  return ds.shuffle(seed=seed).repeat() if train else ds


# Consecutive sequences of a stream (webdataset: no example count to bound it by) dropped as too_long
# after which its examples are taken to fit no sequence of data.chunks: an error, not an endless loop.
MAX_LONG_SEQUENCES = 10_000


def _source_part(spec: sources.SourceSpec, index: int, data_cfg: Mapping[str, Any], fmt: formats.BatchFormat,
                 tokenizer: Tokenizer, *, seed: int, train: bool, process_index: int, process_count: int,
                 workers: int, read_options: grain.ReadOptions) -> grain.IterDataset:
  """One source's examples (a chunked format: sequences), bad samples skipped and counted."""
  part_seed = source_seed(seed, index)
  chunks = int(data_cfg.get("chunks", 1)) if fmt.chunked else 1
  max_len = int(data_cfg.get("max_len", DEFAULT_MAX_LEN))
  # Chunked formats tokenize per example here: what cannot make a row is skipped, not a failed batch.
  chunk_tokens = functools.partial(fmt.chunk_tokens, tokenizer) if fmt.chunk_tokens else None
  canvas = _canvas(data_cfg, train) or naflex.source_canvas(data_cfg, train)  # NaFlex: crops at their aspect
  preprocess = examples.Preprocess(int(data_cfg.get("image_size", 64)), train, sources.crop_scale(data_cfg),
                                   decode_images=fmt.renders, chunks=chunks, chunk_tokens=chunk_tokens,
                                   max_len=max_len, canvas=canvas, jpeg_decoder=data_cfg.get("jpeg_decoder", "pil"),
                                   boxes=fmt.reads_boxes)
  if spec.name == "webdataset":
    shards = webdataset.host_shards(webdataset.shard_paths(spec.path), process_index, process_count)
    cycle = min(int(data_cfg.get("cycle_length", 4)), len(shards)) if train else 1
    keys = fields.record_keys(spec, fmt.chunked)
    ds = shard_sequence(shards, part_seed, train).map(functools.partial(
        webdataset.TarShardDataset, caption_key=spec.caption_key, question_key=keys.question, answer_key=keys.answer))
    part = grain.experimental.InterleaveIterDataset(ds, cycle_length=cycle).random_map(preprocess, seed=part_seed)
    # Enough consecutive shard ends without a usable sample that every shard has been read.
    max_bad, max_bad_shards = None, (2 * len(shards) * max(1, workers) + cycle if train else None)
  else:
    source = sources.open_map_source(spec, fmt.chunked)
    ds = grain.MapDataset.source(source)
    if train:
      ds = ds.shuffle(seed=part_seed).repeat()
    # random_map before the host slice: the generator follows the global example index.
    ds = ds.random_map(preprocess, seed=part_seed)[process_index::process_count]
    part = ds.to_iter_dataset(read_options)
    max_bad, max_bad_shards = (2 * len(source) * max(1, workers) * process_count if train else None), None
  if spec.chunks_key:
    part = grain.experimental.FlatMapIterDataset(part, _DocumentSequences())
  part = skips.SkipBadIterDataset(part, [spec.label], [max_bad], [max_bad_shards])
  if fmt.chunked and not spec.chunks_key:
    part = part.batch(chunks, drop_remainder=True, batch_fn=functools.partial(_sequence_of_examples, max_len))
    if chunks > 1:  # examples that fit alone may not fit together: drop (and count) those sequences
      max_long = (max_bad or MAX_LONG_SEQUENCES) if train else None
      part = skips.SkipBadIterDataset(part, [spec.label], [max_long], [None])
  return part


def _real_dataset(data_cfg: Mapping[str, Any], tokenizer: Tokenizer, *, local_batch: int, seed: int,
                  process_index: int, process_count: int, train: bool) -> grain.IterDataset:
  specs = sources.check_settings(data_cfg)  # paths and keys: checked as each source opens
  fmt = check_format(data_cfg.get("format", "caption"))
  workers = int(data_cfg.get("workers", 0)) if train else 0
  prefetch = max(1, int(data_cfg.get("prefetch", 4)))
  read_options = grain.ReadOptions(num_threads=data_cfg.get("num_threads", 2),
                                   prefetch_buffer_size=prefetch * local_batch)
  parts = [_source_part(spec, i, data_cfg, fmt, tokenizer, seed=seed, train=train, process_index=process_index,
                        process_count=process_count, workers=workers, read_options=read_options)
           for i, spec in enumerate(specs)]
  ds = parts[0] if len(parts) == 1 else grain.IterDataset.mix(parts, [s.weight for s in specs])
  settings = formats.CollateSettings(tokenizer, int(data_cfg.get("max_len", DEFAULT_MAX_LEN)),
                                     data_cfg.get("normalization", "siglip"),
                                     canvas=_canvas(data_cfg, train), locca_tasks=locca_tasks(data_cfg))
  ds = ds.batch(local_batch, drop_remainder=train, batch_fn=naflex.wrap_collate(_RealCollate(fmt, settings), data_cfg))
  if workers:
    return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                       per_worker_buffer_size=max(1, prefetch // workers)))
  # No workers: one thread builds batches ahead, so decoding overlaps the training step.
  return grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
