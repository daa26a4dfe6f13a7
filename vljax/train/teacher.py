"""A frozen teacher: another vljax workdir's model (a trained run, or one python -m vljax.convert
wrote), run beside the student for the distillation objectives (vljax/objectives/distillation.py).

  teacher = dict(workdir="runs/clip_l",   # "" : no teacher
                 step=-1,                 # its checkpoint: a step, or -1 for the latest
                 weights="raw")           # its "raw" weights or its "ema" (vljax/train/ema.py)

The teacher's model is built from its workdir's config.json and its params read from its checkpoint
(checkpoint_io.load_params). It must read the student's inputs as the student does: the same
tokenizer (else its text ids would mean other tokens) and the same pixel normalization; its image
size and text length must fit the student's batches. Its params enter the jitted train step as an
argument of their own, placed on the run's mesh by their logical names: they are never in the
TrainState, the optimizer or the checkpoint. A resume reads them again from the teacher's workdir,
so resuming needs that workdir (and the step it names) unchanged. Objectives run it through
ModelAccess.teacher: deterministic (train=False), under stop_gradient.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import linen as nn
from flax import traverse_util

from vljax import checkpoint_io
from vljax.parallel.sharding import LOGICAL_RULES

# The outputs a teacher must give to serve the distillation objectives.
TEACHER_OUTPUTS = ("img_emb", "txt_emb", "logit_scale")


def enabled(cfg) -> bool:
  """Whether cfg distills from a teacher (teacher.workdir set; configs from before `teacher` have none)."""
  return "teacher" in cfg and bool(cfg.teacher.workdir)


def _teacher_config(cfg) -> ml_collections.ConfigDict:
  from vljax import config as config_lib
  return config_lib.workdir_config(cfg.teacher.workdir, f"config.teacher.workdir={cfg.teacher.workdir!r}")


def check(cfg) -> None:
  """teacher's values, named when wrong; with a workdir, that it holds a config.json and a
  checkpoint at `step`, and reads the student's inputs (tokenizer, pixel normalization)."""
  t = cfg.teacher
  if not isinstance(t.workdir, str):
    raise ValueError(f"config.teacher.workdir={t.workdir!r} is invalid; valid: '' (no teacher) or a vljax workdir")
  if isinstance(t.step, bool) or not isinstance(t.step, int) or t.step < -1:
    raise ValueError(f"config.teacher.step={t.step!r} is invalid; valid: -1 (the latest checkpoint) or a step >= 0")
  if t.weights not in checkpoint_io.WEIGHTS:
    raise ValueError(f"config.teacher.weights={t.weights!r} is invalid; valid: one of {list(checkpoint_io.WEIGHTS)}")
  if not t.workdir:
    from vljax.objectives import distillation  # lazy: the objectives import jax
    users = [n for n in cfg.objectives if n in distillation.USES_TEACHER]
    if users:
      raise ValueError(f"objectives.{users[0]} needs a teacher: set teacher.workdir to a trained or imported vljax "
                       "workdir (config.teacher.workdir='' gives none; vljax/train/teacher.py)")
    return
  teacher_cfg = _teacher_config(cfg)
  mine, theirs = cfg.data.tokenizer, teacher_cfg.data.get("tokenizer", "shapes")
  if mine != theirs:
    raise ValueError(f"config.teacher.workdir={t.workdir!r} reads text with tokenizer {theirs!r}, this run with "
                     f"data.tokenizer={mine!r}: the teacher would read other tokens; valid: a teacher trained "
                     f"with this run's tokenizer, or data.tokenizer={theirs!r}")
  mine, theirs = cfg.data.normalization, teacher_cfg.data.get("normalization", "siglip")
  if mine != theirs:
    raise ValueError(f"config.teacher.workdir={t.workdir!r} reads pixels with normalization {theirs!r}, this run "
                     f"with data.normalization={mine!r}; valid: data.normalization={theirs!r}")
  steps = checkpoint_io.checkpoint_steps(t.workdir)
  if not steps:
    raise FileNotFoundError(f"config.teacher.workdir={t.workdir!r} holds no checkpoint "
                            f"({checkpoint_io.checkpoint_dir(t.workdir)!r}); train or convert that run first")
  if t.step >= 0 and t.step not in steps:
    raise ValueError(f"config.teacher.step={t.step} is not a checkpoint of {t.workdir!r}; valid: -1 (the latest) "
                     f"or one of {steps}")


@dataclasses.dataclass
class Teacher:
  """A teacher's model and where it comes from; `params` (on the mesh) and `shardings` once placed."""
  workdir: str
  step: int
  weights: str
  cfg: ml_collections.ConfigDict
  module: nn.Module
  params: Any = None
  shardings: Any = None


def build(cfg, student, inputs: dict) -> Teacher | None:
  """The teacher's model (no params yet), checked against the student `student` on model inputs
  shaped like the run's (state.dummy_inputs): it gives the embeddings the objectives read, runs on
  the student's inputs, and, for the objectives that compare embeddings themselves, has the
  student's embedding widths. None when cfg has no teacher."""
  from vljax.data import tokenizers
  from vljax.models import capabilities, get_model
  from vljax.models.resolve import resolve_model_config
  from vljax.objectives import distillation

  if not enabled(cfg):
    return None
  t = cfg.teacher
  teacher_cfg = _teacher_config(cfg)
  step = t.step if t.step >= 0 else checkpoint_io.checkpoint_steps(t.workdir)[-1]
  module = get_model(resolve_model_config(teacher_cfg, tokenizers.get_tokenizer(teacher_cfg.data.tokenizer)))
  missing = [k for k in TEACHER_OUTPUTS if k not in capabilities.training_outputs(module)]
  if missing:
    raise ValueError(f"config.teacher.workdir={t.workdir!r}: its model {teacher_cfg.model.get('name')!r} gives no "
                     f"{missing}; a teacher needs contrastive embeddings {list(TEACHER_OUTPUTS)}")
  theirs = _output_shapes(module, inputs, f"config.teacher.workdir={t.workdir!r} (image_size "
                          f"{teacher_cfg.data.get('image_size')}, max_len {teacher_cfg.data.get('max_len')})",
                          cfg)
  same_width = [n for n in cfg.objectives if n in distillation.SAME_WIDTH]
  if same_width:
    mine = _output_shapes(student, inputs, "the student", cfg)
    for key in ("img_emb", "txt_emb"):
      if mine[key].shape != theirs[key].shape:
        raise ValueError(
            f"objectives.{same_width[0]} compares the student's {key} with the teacher's, but the teacher "
            f"{t.workdir!r} gives width {theirs[key].shape[-1]} (shape {tuple(theirs[key].shape[1:])} per example) and "
            f"the student {mine[key].shape[-1]} (shape {tuple(mine[key].shape[1:])}), and the student has no "
            f"projection to the teacher's width; valid: a student with model.contrastive.embed_dim="
            f"{theirs[key].shape[-1]}, or objectives.distill_logits (any widths)")
  return Teacher(t.workdir, step, t.weights, teacher_cfg, module)


def _output_shapes(module, inputs: dict, who: str, cfg) -> dict:
  """The image-only and text-only outputs' ShapeDtypeStructs of `module` (traced, nothing computed)."""
  def run():
    variables = module.init(jax.random.PRNGKey(0), **inputs)
    return {**module.apply(variables, image=inputs["image"], train=False),
            **module.apply(variables, text=inputs["text"], train=False)}
  try:
    return jax.eval_shape(run)
  except Exception as e:  # noqa: BLE001: any failure to trace is the inputs not fitting the model
    raise ValueError(f"{who} cannot run on this run's inputs (data.image_size={cfg.data.image_size}, "
                     f"data.max_len={cfg.data.max_len}): {type(e).__name__}: {e}") from e


def place(teacher: Teacher, mesh, inputs: dict) -> Teacher:
  """`teacher` with its checkpoint's params on `mesh`, sharded by their logical names (replicated where
  the rules name no mesh axis), in the dtypes its own model declares."""
  from vljax.train.state import param_shardings

  with nn.logical_axis_rules(LOGICAL_RULES):
    boxed = jax.eval_shape(teacher.module.init, jax.random.PRNGKey(0), **inputs)["params"]
  shardings = param_shardings(boxed, mesh)
  abstract = nn.unbox(boxed)
  loaded, _ = checkpoint_io.load_params(teacher.workdir, teacher.step, purpose=f"config.teacher.workdir="
                                        f"{teacher.workdir!r}", weights=teacher.weights)
  problems = checkpoint_io.shape_mismatches(checkpoint_io.param_shapes(loaded), checkpoint_io.param_shapes(abstract))
  if problems:
    raise ValueError(f"config.teacher.workdir={teacher.workdir!r} (step {teacher.step}): its checkpoint does not fit "
                     "the model its config.json builds:\n  " + "\n  ".join(problems))
  flat = traverse_util.flatten_dict(loaded, sep="/")
  flat_abstract = traverse_util.flatten_dict(abstract, sep="/")
  flat_sh = traverse_util.flatten_dict(shardings, sep="/")
  params = traverse_util.unflatten_dict(
      {k: jax.device_put(np.asarray(v).astype(flat_abstract[k].dtype), flat_sh[k]) for k, v in flat.items()}, sep="/")
  return dataclasses.replace(teacher, params=params, shardings=shardings)


def load(cfg, student, mesh, inputs: dict) -> Teacher | None:
  """build, then place: the run's teacher with its params on `mesh` (None when cfg has none)."""
  teacher = build(cfg, student, inputs)
  return None if teacher is None else place(teacher, mesh, inputs)


def check_wiring(cfg, teacher: Teacher | None) -> None:
  """A step built for a config with a teacher must be given it (and one without, none)."""
  if enabled(cfg) and (teacher is None or teacher.params is None):
    raise ValueError(f"config.teacher.workdir={cfg.teacher.workdir!r}: build the train step with the loaded teacher "
                     "(vljax.train.teacher.load)")
  if teacher is not None and not enabled(cfg):
    raise ValueError("a teacher was given for a config without teacher.workdir")
