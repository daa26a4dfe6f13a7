"""CapFilt's two runs: the captioner (an image-grounded caption decoder) and the filter (an ITM head),
each loaded from its workdir at a pinned checkpoint step, with its own preprocessing.

Every process drives its own devices only (a mesh of jax.local_devices()): hosts work on different
shards, so nothing they compute is shared.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import linen as nn

from vljax import checkpoint_io
from vljax import decode as decode_lib
from vljax.capfilt import job as job_lib
from vljax.data import images as images_lib
from vljax.data import tokenizers
from vljax.inference.runner import ModelRunner
from vljax.models import capabilities as model_decl, get_model
from vljax.models.resolve import resolve_model_config
from vljax.parallel.mesh import make_mesh
from vljax.parallel.sharding import replicated

ROLES = ("captioner", "filter")


@dataclasses.dataclass(eq=False)  # hashed by identity: its sampler is cached per run
class Run:
  """One workdir's model, params, tokenizer and preprocessing."""

  role: str
  workdir: str
  cfg: ml_collections.ConfigDict
  tokenizer: Any
  model: nn.Module
  step: int
  params: Any = None
  runner: ModelRunner | None = None

  @property
  def image_size(self) -> int:
    return int(self.cfg.data.image_size)

  @property
  def max_len(self) -> int:
    return int(self.cfg.data.max_len)

  @property
  def preprocessing(self) -> tuple:
    """What `preprocess` depends on: two runs that agree on it read the same pixels."""
    data = self.cfg.data
    return self.image_size, data.get("jpeg_decoder", "pil"), data.get("normalization", "siglip")

  def preprocess(self, image: bytes) -> np.ndarray:
    """Encoded image -> float32 [size, size, 3] as the run's evaluation reads it (resize the shorter
    side, center crop, normalise); CorruptImageError for bytes that do not decode."""
    im = images_lib.decode_image(image, self.cfg.data.get("jpeg_decoder", "pil"))
    pixels = images_lib.resize_center_crop(im, self.image_size)
    return images_lib.normalize(pixels, self.cfg.data.get("normalization", "siglip"))


def _check_role(role: str, workdir: str, model: nn.Module) -> None:
  name = type(model).__name__
  if role == "captioner" and (not ModelRunner.generative_model(model) or getattr(model, "image_prompted", False)):
    raise ValueError(f"--captioner {workdir!r}: its model ({name}) lacks an image-grounded caption decoder; "
                     "valid: a run with model.decoder (e.g. configs/blip_shapes.py arm=blip, CoCa, CapPa)")
  if role == "filter" and model_decl.MATCHING not in model_decl.of(model):
    raise ValueError(f"--filter {workdir!r}: its model ({name}) lacks {model_decl.DESCRIPTIONS[model_decl.MATCHING]}; "
                     "valid: a run with model.fusion (e.g. configs/blip_shapes.py arm=blip or itc_itm)")


def open_run(role: str, workdir: str, step: int | None = None) -> Run:
  """The run's config and model, checked for the role, and the checkpoint step to read (the latest
  unless pinned); no params read yet."""
  assert role in ROLES, role
  path = epath.Path(workdir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"--{role} {workdir!r}: {str(path)!r} does not exist; is it a vljax workdir?")
  cfg = ml_collections.ConfigDict(json.loads(path.read_text()))
  tokenizer = tokenizers.get_tokenizer(cfg.data.tokenizer)
  model = get_model(resolve_model_config(cfg, tokenizer))
  _check_role(role, workdir, model)
  step = checkpoint_io.pinned_step(workdir, step, f"--{role}", "this job read its checkpoint at",
                                   "start a new job in a new --output")
  return Run(role, workdir, cfg, tokenizer, model, step)


def local_mesh() -> jax.sharding.Mesh:
  return make_mesh({"data": -1}, devices=jax.local_devices())


_LOADED: collections.OrderedDict[tuple, Run] = collections.OrderedDict()
_KEEP_LOADED = 2  # a captioner and a filter


def loaded(run: Run, mesh: jax.sharding.Mesh, batch_size: int) -> Run:
  """The run with its params on the mesh's devices and a runner. A process keeps the last two it
  loaded: a filter of the captioner's workdir and step shares its params, and later jobs in the same
  process (a notebook, tests) their compiled functions."""
  key = (job_lib.absolute(run.workdir), run.step, batch_size, tuple(d.id for d in mesh.devices.flat))
  if key in _LOADED:
    _LOADED.move_to_end(key)
    return _LOADED[key]
  params, _ = checkpoint_io.load_params(run.workdir, run.step, purpose=f"--{run.role}")
  run.params = jax.device_put(params, replicated(mesh))
  run.runner = ModelRunner(run.model, mesh, batch_size, run.tokenizer)
  _LOADED[key] = run
  while len(_LOADED) > _KEEP_LOADED:
    _LOADED.popitem(last=False)
  return run


def caption_keys(seed: int, indices: Sequence[tuple[int, ...]], per_image: int) -> np.ndarray:
  """uint32 [len(indices) * per_image, 2]: caption j of the record at `index` draws from
  fold_in(...fold_in(PRNGKey(seed), index[0])..., j), whatever else is in its batch."""
  return np.asarray(_fold_keys(seed, np.asarray(indices, np.uint32), per_image)).reshape(-1, 2)


@functools.partial(jax.jit, static_argnums=2)
def _fold_keys(seed, indices, per_image):
  def one(index):
    key = jax.random.PRNGKey(seed)
    for i in range(indices.shape[1]):
      key = jax.random.fold_in(key, index[i])
    return jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(per_image))
  return jax.vmap(one)(indices)


def sample_captions(run: Run, pixels: np.ndarray, keys: np.ndarray, options: decode_lib.DecodeOptions) -> list[str]:
  """One caption per row of pixels [B, H, W, 3] (preprocessed) and keys [B, 2], each row's from its key alone."""
  return run.runner.sample_captions(run.params, pixels, keys, options)


def match_probs(run: Run, pixels: np.ndarray, image_of: np.ndarray, texts: Sequence[str]) -> np.ndarray:
  """float32 [len(texts)]: the filter's ITM match probability of texts[i] with image image_of[i]
  (each image encoded once)."""
  memory = run.runner.fusion_memory(run.params, pixels)
  tokens = run.tokenizer.encode(list(texts), run.max_len)
  return run.runner.match_probs(run.params, memory, tokens, image_of)
