"""Builds a run's parts from its config: tokenizer, model, optimizer, data, evaluators."""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from vljax import config as config_lib
from vljax import evals, models, objectives
from vljax.data import formats, pipeline, tokenizers
from vljax.evals import requirements, world as eval_world
from vljax.models import capabilities as model_decl
from vljax.models import legacy
from vljax.models.resolve import resolve_model_config
from vljax.train import optim, teacher as teacher_lib
from vljax.train.state import dummy_inputs


@dataclasses.dataclass
class RunParts:
  tokenizer: Any
  model_cfg: dict
  model: Any
  schedule: Any
  tx: Any
  evaluators: dict
  teacher: Any = None  # teacher_lib.Teacher without its params (teacher_lib.place puts them on the mesh), or None


def check_tokenizer_layout(cfg: ml_collections.ConfigDict, tokenizer) -> None:
  """Rows without BOS or padded with EOS suit contrastive text towers (SigLIP's); next-token losses
  need the BOS to predict the first word from and the padding to see where the text ends."""
  generative = "captioning" in cfg.objectives or formats.get_format(cfg.data.format).chunked
  if generative and (not tokenizer.add_bos or tokenizer.pad_with_eos):
    raise ValueError(f"data.tokenizer={cfg.data.tokenizer!r}: bos=none and pad=eos are for contrastive text "
                     f"towers; objectives {sorted(cfg.objectives)} with data.format={cfg.data.format!r} "
                     "need the default layout (drop those options)")


def check_model_data(cfg: ml_collections.ConfigDict, model) -> None:
  """The data format fills every input the model reads. Image-prompted models read images only
  through <image> tokens: they train on "vlm" sequences, one image per chunk, and LLaVA splices in
  exactly one image per sequence."""
  if getattr(model, "image_prompted", False):
    if cfg.data.format != "vlm":
      raise ValueError(f"model {cfg.model.name!r} reads images through <image> tokens in its text: "
                       f"data.format={cfg.data.format!r} has none; valid: data.format='vlm'")
    if getattr(model, "splices_image_tokens", False) and cfg.data.chunks != 1:
      raise ValueError(f"model {cfg.model.name!r} splices exactly one image into a sequence: "
                       f"data.chunks={cfg.data.chunks} would give it {cfg.data.chunks}; valid: data.chunks=1")
  fields = list(formats.get_format(cfg.data.format).fields)
  missing = [k for k in model.inputs if k not in fields]
  if missing:
    fits = sorted(f.name for f in formats.FORMATS.values() if set(model.inputs) <= set(f.fields))
    raise ValueError(f"model {cfg.model.name!r} reads {list(model.inputs)}, but data.format={cfg.data.format!r} "
                     f"holds no {missing[0]!r} (it fills {list(fields)}); valid: data.format in {fits}")


def check_objectives_served(cfg: ml_collections.ConfigDict, model) -> None:
  """Every objective finds the model outputs it declares it reads; else an error naming the
  objective, the model and what would work (a model setting that adds the output, the objectives
  this model serves, the models that give it)."""
  have = model_decl.training_outputs(model)
  impl = cfg.get("loss_impl", "gather")
  for name in cfg.objectives:
    info = objectives.get_objective(name)
    if impl not in info.impls:
      raise ValueError(f"objectives.{name} has no loss_impl={impl!r} form; valid: loss_impl in {list(info.impls)}")
    missing = [k for k in info.needs if k not in have]
    if not missing:
      continue
    settings = [s for k in missing if (s := getattr(model, "output_settings", {}).get(k))]
    hints = [f"set {s}" for s in dict.fromkeys(settings)]
    served = sorted(n for n, o in objectives.OBJECTIVES.items() if set(o.needs) <= have)
    hints.append(f"objectives this model serves: {served}")
    givers = sorted(n for n, cls in models.MODELS.items() if n != cfg.model.name and missing[0] in cls.output_names)
    if givers:
      hints.append(f"a model that gives {missing[0]!r}: {givers}")
    raise ValueError(f"objectives.{name} needs model output(s) {missing}; model {cfg.model.name!r} gives "
                     f"{sorted(have)}. Valid: {'; or '.join(hints)}")


def build(cfg: ml_collections.ConfigDict) -> RunParts:
  """Every name in the config is checked here, before the workdir is touched. A legacy model name
  (two_tower, coca, cappa) becomes its composable config, in `cfg` itself (vljax/models/legacy.py)."""
  legacy.upgrade_config(cfg)
  config_lib.validate(cfg)
  pipeline.check_data_config(cfg.data)  # names, presets, paths and keys of the data, before any compute
  objectives.parse_objectives(cfg.objectives)
  evaluator_classes = {name: evals.get_evaluator(name) for name in cfg.evals}
  tokenizer = tokenizers.get_tokenizer(cfg.data.tokenizer)
  check_tokenizer_layout(cfg, tokenizer)
  model_cfg = resolve_model_config(cfg, tokenizer)
  model = models.get_model(model_cfg)
  check_model_data(cfg, model)
  check_objectives_served(cfg, model)
  requirements.check_evaluators(evaluator_classes, cfg.evals, model, cfg.model.name, models.MODELS)
  eval_world.check_world_readers(evaluator_classes, cfg.evals, cfg.data)
  schedule = optim.make_schedule(cfg, cfg.total_steps)
  tx = optim.make_optimizer(cfg, schedule)
  # The data config gives image size, normalisation and, to those that read it, the shapes world.
  evaluators = {name: cls(cfg.evals[name], tokenizer=tokenizer, max_len=cfg.data.max_len, data=cfg.data)
                for name, cls in evaluator_classes.items()}
  # The teacher's model, checked against the student's (its params are read onto the mesh later).
  teacher = teacher_lib.build(cfg, model, dummy_inputs(cfg, 1)) if teacher_lib.enabled(cfg) else None
  return RunParts(tokenizer, model_cfg, model, schedule, tx, evaluators, teacher)


def make_data_iterator(cfg, tokenizer, process_index: int, process_count: int):
  ds = pipeline.make_train_dataset(cfg.data, tokenizer, global_batch_size=cfg.batch_size, seed=cfg.seed,
                                   process_index=process_index, process_count=process_count)
  return iter(ds)
