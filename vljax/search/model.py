"""The workdir whose embeddings an index holds: checked for contrastive embeddings before any
weights are read, then loaded through `vljax.load` (the weights its own evaluations scored)."""

from __future__ import annotations

import dataclasses
import json

import jax
import ml_collections
import numpy as np
from etils import epath

from vljax import checkpoint_io
from vljax.data import images as images_lib
from vljax.data import tokenizers
from vljax.inference import predictor as predictor_lib
from vljax.inference.runner import ModelRunner
from vljax.models import capabilities as model_decl, get_model
from vljax.models.resolve import resolve_model_config


@dataclasses.dataclass
class Run:
  """A workdir's config and the checkpoint step to read; no weights yet."""

  workdir: str
  cfg: ml_collections.ConfigDict
  step: int


def open_run(workdir: str, step: int | None = None) -> Run:
  """The run at its latest checkpoint (or `step`, which must still exist); ValueError when its model
  has no image or no text embedding (an LM, a captioner without a contrastive head)."""
  path = epath.Path(workdir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"--workdir {workdir!r}: {str(path)!r} does not exist; is it a vljax workdir?")
  cfg = ml_collections.ConfigDict(json.loads(path.read_text()))
  model = get_model(resolve_model_config(cfg, tokenizers.get_tokenizer(cfg.data.tokenizer)))
  caps = model_decl.of(model)
  if model_decl.EMBEDDINGS not in caps:
    raise ValueError(f"--workdir {workdir!r}: its model ({type(model).__name__}) has no image and text embeddings "
                     f"to search with (it has: {model_decl.describe(caps)}); valid: a run with "
                     f"{model_decl.DESCRIPTIONS[model_decl.EMBEDDINGS]} (CLIP, SigLIP, CoCa, BLIP, BLIP-2)")
  step = checkpoint_io.pinned_step(workdir, step, "--workdir", "the index was made at checkpoint", "make a new index")
  return Run(workdir, cfg, step)


class Embedder:
  """L2-normalised embeddings of images (uint8 at the run's size) and texts, on all local devices."""

  def __init__(self, run: Run, batch_size: int):
    self.predictor = predictor_lib.load(run.workdir, run.step)
    self.normalization = run.cfg.data.get("normalization", "siglip")
    # Indexing wants large batches; a query's one text or image the predictor's small chunk.
    self.runner = ModelRunner(self.predictor.model, self.predictor.mesh, batch_size, self.predictor.tokenizer)

  @property
  def batch_size(self) -> int:
    return self.runner.chunk  # a multiple of the devices

  def images(self, pixels: np.ndarray, batch: bool = True) -> np.ndarray:
    """float32 [N, E] (or [N, Q, E] for a query-form model, BLIP-2's) of uint8 [N, size, size, 3];
    batch=False: through the predictor's small chunk (one query image)."""
    runner = self.runner if batch else self.predictor.runner
    with jax.set_mesh(self.predictor.mesh):
      return np.asarray(runner.images(self.predictor.params, images_lib.normalize(pixels, self.normalization)),
                        np.float32)

  def text(self, text: str) -> np.ndarray:
    """float32 [E] of one text."""
    return np.asarray(self.predictor.encode_text([text])[0], np.float32)
