"""The config schema: every recipe starts from `base_config()`; `validate` rejects unknown names.

The presets recipes share are configs/common.py; `load_config` and `put_recipe_dirs_on_path` let a
recipe import them (`import common`) from its own directory, whatever the working directory."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence

import ml_collections

# Area range of the training random resized crop: open_clip's default, and the fallback of a data
# config without one (vljax.data.sources.crop_scale).
CROP_SCALE = (0.9, 1.0)


def base_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """All top-level fields with their defaults; recipes set `model`, `objectives`, `evals`."""
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0                           # initialisation and training data order (not the eval sets)
  c.model = dict(name="composable")
  c.objectives = {"softmax_contrastive": 1.0}
  c.loss_impl = "gather"               # "gather" (XLA collectives) or "shard_map" (all-gather / ring)
  c.data = dict(name="shapes", format="caption", vqa_fraction=0.5, conversation_fraction=0.0, chunks=1, image_size=64, max_len=24,
                caption_noise=0.0, tokenizer="shapes",
                world_seed=0,                # the shapes world and its eval sets: fixed across run seeds
                min_objects=1, max_objects=3, num_threads=2, prefetch=4, workers=0,
                normalization="siglip",      # pixel preset (vljax.data.images.NORMALIZATIONS); siglip: [-1, 1]
                # Real data (name: tfds, array_record, webdataset, folder, mixture): the keys are
                # documented in vljax/data/sources/__init__.py.
                path="", split="train", tfds_name="", image_key="image", caption_key="caption",
                label_template="a photo of a {}.", crop_scale=CROP_SCALE, cycle_length=4, sources=(),
                question_key="question", answer_key="answer", chunks_key="", conversation_key="conversations",
                # "device": the host ships crops as uint8 canvases of canvas_size (0: about 2.25 x image_size) and
                # the train step resizes them (vljax/data/device_resize.py); evaluation stays on the host.
                resize="host", canvas_size=0,
                # True: the real source holds scenes of the shapes world above (vljax.capfilt.noisy_shapes
                # and CapFilt's output of it), so the shapes evaluators measure the run.
                shapes_scenes=False,
                # data.format="locca": each example's task drawn with these probabilities (vljax/data/boxes.py)
                locca=dict(tasks=dict(caption=0.5, refexp=0.25, grounded=0.25)),
                # dict(max_patches, patch, aspect): variable resolution, images packed to a token budget for a
                # NaFlex image tower (model.image.naflex; vljax/data/naflex.py); None: fixed-size images.
                naflex=None,
                jpeg_decoder="pil")          # or "simplejpeg" (vljax.data.images.JPEG_DECODERS)
  c.batch_size = 128                   # global, over all hosts
  c.grad_accum_steps = 1
  c.grad_accum_mode = "mean"           # "mean" of micro-batch grads, or "gradcache" (full-batch negatives)
  c.total_steps = 1000
  c.optimizer = dict(name="adamw", lr=1e-3, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, grad_clip_norm=1.0)
  c.schedule = dict(name="warmup_cosine", warmup_steps=100, end_fraction=0.0)
  c.ema = dict(decay=0.0, warmup=False, evaluate="raw")  # weight averaging: vljax/train/ema.py
  # A frozen teacher for the distillation objectives: a vljax workdir ("": none), its checkpoint step
  # (-1: the latest) and its "raw" or "ema" weights (vljax/train/teacher.py).
  c.teacher = dict(workdir="", step=-1, weights="raw")
  c.frozen = ()                        # regexes over param paths like "img/.*": no update, no gradient
  # Params from other runs: workdir + subtree ("img", or several: "txt,lm"), and more sources as
  # "WORKDIR:SUBTREE[,SUBTREE]" strings, e.g. sources=("runs/lm:txt,lm,logits",).
  c.init_from = dict(workdir="", subtree="", step=-1, sources=())
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.precision = dict(param_dtype="float32", compute_dtype="float32")
  c.evals = {}
  c.eval_batch_size = 256
  c.checkpoint = dict(every=500, keep=3, async_save=True)
  c.log_every = 50
  c.peak_flops = 0.0                   # per-device peak for MFU where the device is not in the table
  c.progress_bar = True
  return c


def workdir_config(workdir: str, where: str) -> ml_collections.ConfigDict:
  """The config.json of a vljax workdir (a trained run, or one python -m vljax.convert wrote); `where`
  names the argument that gave it, for the error when there is none."""
  import json
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{where}: {path!r} does not exist; give a vljax workdir (a trained run, or one "
                            "python -m vljax.convert wrote)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the recipe file at `path` (outside the absl command line)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  put_recipe_dir_on_path(path)
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def put_recipe_dir_on_path(path: str) -> None:
  """The directory of the recipe `path[:ARG]` first on sys.path, as running the file would put it:
  its `import common` finds the presets next to it from any working directory."""
  file = path.split(":", 1)[0]
  if not file:
    return
  directory = os.path.dirname(os.path.abspath(file))
  if directory not in sys.path:
    sys.path.insert(0, directory)


def put_recipe_dirs_on_path(argv: Sequence[str], flag: str = "config") -> None:
  """For each `--config PATH[:ARG]` / `--config=PATH[:ARG]` in `argv`, its recipe's directory on
  sys.path. Call before absl parses the flags: ml_collections loads the recipe file then, by path
  alone, without adding its directory."""
  names = (f"--{flag}", f"-{flag}")
  for i, item in enumerate(argv):
    name, sep, value = item.partition("=")
    if name not in names:
      continue
    if sep:
      put_recipe_dir_on_path(value)
    elif i + 1 < len(argv):
      put_recipe_dir_on_path(argv[i + 1])


TOP_LEVEL_KEYS = frozenset(base_config().keys())
GRAD_ACCUM_MODES = ("mean", "gradcache")


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Fails fast, naming the bad key or value, before any file in the workdir is touched: the keys
  here, their values in vljax/config_values.py."""
  unknown = sorted(set(cfg.keys()) - TOP_LEVEL_KEYS)
  if unknown:
    raise ValueError(f"config: unknown key(s) {unknown}; valid top-level keys: {sorted(TOP_LEVEL_KEYS)}")
  for section in ("data", "optimizer", "schedule", "init_from", "precision", "checkpoint", "ema", "teacher"):
    extra = sorted(set(cfg[section].keys()) - set(base_config()[section].keys()))
    if extra:
      raise ValueError(f"config.{section}: unknown key(s) {extra}; valid: {sorted(base_config()[section].keys())}")
  from vljax import config_values  # lazy: it reads the registries, which import jax
  config_values.check_values(cfg)
  if cfg.batch_size % cfg.grad_accum_steps:
    raise ValueError(f"config: grad_accum_steps={cfg.grad_accum_steps} must be >= 1 and divide "
                     f"batch_size={cfg.batch_size}")
  if cfg.grad_accum_mode not in GRAD_ACCUM_MODES:
    raise ValueError(f"config: grad_accum_mode={cfg.grad_accum_mode!r} is unknown; "
                     f"valid: {list(GRAD_ACCUM_MODES)}")
  if not cfg.objectives:
    raise ValueError("config.objectives is empty; give at least one `name: weight`")
  if cfg.grad_accum_mode == "gradcache":
    from vljax.train import gradcache  # lazy: the schema itself needs no jax
    gradcache.check_objectives(cfg.objectives)
  if "teacher" in cfg:
    from vljax.train import teacher  # lazy: it reads checkpoints
    teacher.check(cfg)
