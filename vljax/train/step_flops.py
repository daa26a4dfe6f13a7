"""Model FLOPs of one train step of a config: what MFU, model TFLOP/s and the bench divide by."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import ml_collections
from absl import logging

from vljax import objectives
from vljax.models import flops
from vljax.train.optim import frozen_predicate


def objective_passes(names: Iterable[str]) -> dict[str, float]:
  """model method -> runs per example, summed over the objectives' declared further passes (ITM's
  itm_logits on 3 pairs an example, MLM's mlm_logits on 1)."""
  out: dict[str, float] = {}
  for name in names:
    for method, runs in objectives.get_objective(name).passes:
      out[method] = out.get(method, 0.0) + runs
  return out


def train_step_flops(cfg: ml_collections.ConfigDict, model_cfg: dict,
                     param_shapes: Mapping[str, Sequence[int]]) -> tuple[float | None, str]:
  """(FLOPs of one step over the global batch, or None, and why none): the model's declared parts,
  with the further passes the configured objectives declare (an ITM pass on mined negatives),
  forward and the backward that cfg.frozen leaves (vljax/models/flops.py). Gradient accumulation
  and GradCache do the same useful work for the batch; their extra forward passes count no more
  than remat's."""
  passes = objective_passes(cfg.objectives)
  try:
    parts = flops.model_parts(model_cfg, flops.Inputs.from_data(cfg.data), passes)
  except flops.UncountedPass as e:
    return None, f"{e} (objectives {sorted(cfg.objectives)} run it): no MFU or model TFLOP/s logged"
  if parts is None:
    return None, (f"model {model_cfg['name']!r} declares no FLOP count (a flop_parts classmethod, see "
                  "vljax/models/flops.py): no MFU or model TFLOP/s logged")
  sizes = {path: math.prod(shape) for path, shape in param_shapes.items()}
  per_example = flops.train_flops(parts, sizes, frozen_predicate(cfg.frozen))
  return cfg.batch_size * per_example, ""


def flops_per_step(cfg: ml_collections.ConfigDict, model_cfg: dict,
                   param_shapes: Mapping[str, Sequence[int]]) -> float | None:
  """train_step_flops, logging once why there is no count where there is none."""
  total, why = train_step_flops(cfg, model_cfg, param_shapes)
  if total is None:
    logging.warning("%s", why)
  return total
