"""An exponential moving average (EMA) of the trainable weights, kept in the train state.

  ema = dict(decay=0.0,        # 0: off; else ema <- decay * ema + (1 - decay) * params after every update
             warmup=False,     # decay_t = min(decay, (1 + t) / (10 + t)): early weights fade fast (timm's)
             evaluate="raw")   # what the evaluators score: "raw" weights, the "ema", or "both"

The EMA covers the trainable params only (a frozen tower is its own average), is sharded like them,
saved in every checkpoint and restored exactly on resume. Objectives read it through
ModelAccess.momentum (BLIP/ALBEF momentum distillation: vljax/objectives/momentum.py). With
evaluate="both" the EMA's evaluations are logged beside the raw ones as eval/<evaluator>/ema_<metric>.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

EVALUATE = ("raw", "ema", "both")
EMA_METRIC_PREFIX = "ema_"


def enabled(cfg) -> bool:
  """Whether cfg keeps an EMA (ema.decay > 0; configs from before `ema` existed keep none)."""
  return "ema" in cfg and float(cfg.ema.decay) > 0


def check(cfg) -> None:
  """ema's values, named when wrong (called with the other config values)."""
  decay, evaluate = cfg.ema.decay, cfg.ema.evaluate
  if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
    raise ValueError(f"config.ema.decay={decay!r} is invalid; valid: 0 (no EMA) or a number in (0, 1), e.g. 0.995 "
                     "(BLIP's momentum encoder) or 0.9999")
  if not isinstance(cfg.ema.warmup, bool):
    raise ValueError(f"config.ema.warmup={cfg.ema.warmup!r} is invalid; valid: True or False")
  if evaluate not in EVALUATE:
    raise ValueError(f"config.ema.evaluate={evaluate!r} is invalid; valid: one of {list(EVALUATE)}")
  if evaluate != "raw" and not decay:
    raise ValueError(f"config.ema.evaluate={evaluate!r} needs an EMA: set ema.decay (e.g. 0.9999), or "
                     "ema.evaluate='raw'")


def decay_at(decay: float, step: jnp.ndarray, warmup: bool) -> jnp.ndarray:
  """The decay applied after update number `step` (0-based)."""
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  step = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def update(ema: Any, trainable: Any, decay: jnp.ndarray) -> Any:
  """decay * ema + (1 - decay) * trainable, leaf by leaf, in each leaf's own dtype."""
  new = optax.incremental_update(trainable, ema, 1.0 - decay)
  return jax.tree.map(lambda x, old: x.astype(old.dtype), new, ema)


def evaluated(cfg, params: Any, ema_params: Any) -> dict[str, Any]:
  """{metric prefix: full params} the evaluators score, as cfg.ema.evaluate says: "" for the
  metrics' own names; EMA_METRIC_PREFIX beside them under "both". ema_params covers the trainable
  params; the frozen ones come from `params`."""
  from vljax.train.optim import merge_params, split_frozen  # lazy: optim imports the model registry

  if ema_params is None or cfg.ema.evaluate == "raw":
    return {"": params}
  _, frozen = split_frozen(params, cfg.frozen)
  averaged = merge_params(ema_params, frozen)
  return {"": averaged} if cfg.ema.evaluate == "ema" else {"": params, EMA_METRIC_PREFIX: averaged}
