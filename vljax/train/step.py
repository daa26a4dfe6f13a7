"""The jitted train step: micro-batch gradient accumulation (mean or GradCache), frozen params,
weighted objectives, the EMA of the weights (vljax/train/ema.py), a frozen teacher's params as an
argument of their own (vljax/train/teacher.py)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from vljax import objectives
from vljax.config import GRAD_ACCUM_MODES
from vljax.data import device_resize, pipeline, tokenizers
from vljax.models.composable import clamp_log_scale
from vljax.parallel.sharding import LOGICAL_RULES, batch_sharding, replicated
from vljax.train import ema as ema_lib, gradcache, teacher as teacher_lib
from vljax.train.optim import merge_params, split_frozen
from vljax.train.state import TrainState


def _model_fns(model: nn.Module, cfg, teacher_module: nn.Module | None = None) -> tuple[Callable, Callable, Callable]:
  """(access, apply_fn, loss_fn) of (trainable, frozen, [micro-batch,] rng[, ema, ..., teacher]): the
  model's parameter access for objectives, its forward pass, and cfg's weighted objectives -> (loss,
  metrics). ema: the EMA of the trainable params (vljax/train/ema.py), the objectives' momentum model;
  teacher: the params of teacher_module, the run's frozen teacher (vljax/train/teacher.py)."""
  weights, impl, pad_id = cfg.objectives, cfg.get("loss_impl", "gather"), tokenizers.PAD_ID
  total_steps = cfg.get("total_steps")

  def access(trainable, frozen_params, rng, ema=None, teacher=None, step=None):
    momentum = None if ema is None else merge_params(ema, frozen_params)
    run_teacher = None if teacher is None or teacher_module is None else (teacher_module, teacher)
    return objectives.ModelAccess(model, merge_params(trainable, frozen_params), rng, momentum_params=momentum,
                                  teacher=run_teacher, step=step, total_steps=total_steps)

  def apply_fn(trainable, frozen_params, micro, rng):
    # Only the inputs the model declares: a text-only model never sees the batch's placeholder image.
    return access(trainable, frozen_params, rng).apply(**{k: micro[k] for k in model.inputs})

  def loss_fn(trainable, frozen_params, micro, rng, ema=None, objective_state=None, teacher=None, step=None):
    out = apply_fn(trainable, frozen_params, micro, rng)
    return objectives.combined_loss(weights, out, micro, impl=impl, pad_id=pad_id,
                                    model=access(trainable, frozen_params, rng, ema, teacher, step),
                                    state=objective_state)

  return access, apply_fn, loss_fn


def make_loss_fn(model: nn.Module, cfg, teacher_module: nn.Module | None = None) -> Callable:
  """(trainable, frozen, batch, rng[, ema, objective_state, teacher, step]) -> (loss, metrics) of cfg's
  objectives on one batch, no accumulation (call under the logical axis rules); metrics[objectives.NEW_STATE]
  holds the stateful objectives' new state; teacher: teacher_module's params; step: the update's number,
  for objectives that switch on late (ModelAccess.switched_on)."""
  return _model_fns(model, cfg, teacher_module)[2]


def make_grads_fn(model: nn.Module, cfg, teacher_module: nn.Module | None = None) -> Callable:
  """(trainable, frozen, batch, rng[, ema, objective_state, teacher, step]) -> (loss, metrics, grads) of cfg's
  objectives, accumulated over grad_accum_steps micro-batches as grad_accum_mode says (call under the logical axis
  rules); metrics[objectives.NEW_STATE] holds the stateful objectives' state after the last micro-batch.

  "mean": the mean of k micro-batch gradients, each micro-batch its own negatives (k x less
  activation memory, a k x smaller contrastive batch). "gradcache": the full-batch loss and
  gradient at one micro-batch's activation memory (vljax/train/gradcache.py).
  """
  weights = cfg.objectives  # validated by setup.build (objectives.parse_objectives)
  impl = cfg.get("loss_impl", "gather")
  pad_id = tokenizers.PAD_ID  # what the captioning loss skips: every tokenizer backend pads with it
  accum = int(cfg.get("grad_accum_steps", 1))
  mode = cfg.get("grad_accum_mode", "mean")
  if mode not in GRAD_ACCUM_MODES:
    raise ValueError(f"grad_accum_mode={mode!r} is unknown; valid: {list(GRAD_ACCUM_MODES)}")
  if mode == "gradcache":
    gradcache.check_objectives(weights)

  access, apply_fn, loss_fn = _model_fns(model, cfg, teacher_module)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)  # the trainable params' gradient only: never the teacher's

  def grads_fn(trainable, frozen_params, batch, rng, ema=None, objective_state=None, teacher=None, step=None):
    if accum == 1:
      (loss, metrics), grads = grad_fn(trainable, frozen_params, batch, rng, ema, objective_state, teacher, step)
      return loss, metrics, grads
    if mode == "gradcache":
      return gradcache.gradcache_value_and_grad(apply_fn, weights, trainable, frozen_params, batch, rng,
                                                k=accum, impl=impl, pad_id=pad_id,
                                                access=lambda p, f, r: access(p, f, r, ema, teacher, step))

    def one(i, obj_state):
      # Micro-batch i = examples i, k+i, 2k+i...: every device keeps its own rows.
      micro = gradcache.take_micro(batch, accum, i)
      (l, m), g = grad_fn(trainable, frozen_params, micro, jax.random.fold_in(rng, i), ema, obj_state, teacher, step)
      obj_state = m.pop(objectives.NEW_STATE, obj_state)  # carried to the next micro-batch, not averaged
      return (l, m, g), obj_state

    def accumulate(carry, i):
      acc, obj_state = carry
      out, obj_state = one(i, obj_state)
      return (jax.tree.map(jnp.add, acc, out), obj_state), None

    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(one, 0, objective_state)[0])
    (sums, obj_state), _ = jax.lax.scan(accumulate, (zeros, objective_state), jnp.arange(accum))
    loss, metrics, grads = jax.tree.map(lambda x: x / accum, sums)
    if obj_state is not None:
      metrics[objectives.NEW_STATE] = obj_state
    return loss, metrics, grads

  return grads_fn


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, cfg, schedule: optax.Schedule,
                    mesh, state_shardings, teacher: teacher_lib.Teacher | None = None) -> Callable:
  """jit(train_step)(state, batch) -> (state, metrics); state donated, shardings pinned. With a teacher
  (teacher_lib.load; required when cfg names one), its params are the jitted step's third argument,
  on their own shardings, bound here: the step is still called (state, batch)."""
  teacher_lib.check_wiring(cfg, teacher)
  frozen = list(cfg.frozen)
  grads_fn = make_grads_fn(model, cfg, None if teacher is None else teacher.module)
  max_logit_scale = getattr(model, "max_logit_scale", None)

  def train_step(state: TrainState, batch: dict, teacher_params=None):
    batch = device_resize.prepare_batch(batch, cfg.data.image_size, cfg.data.normalization)
    trainable, frozen_params = split_frozen(state.params, frozen)
    # Frozen params enter as constants: no gradient is asked for, so XLA computes none.
    frozen_params = jax.lax.stop_gradient(frozen_params)
    rng = jax.random.fold_in(state.rng, state.step)
    with nn.logical_axis_rules(LOGICAL_RULES):
      loss, metrics, grads = grads_fn(trainable, frozen_params, batch, rng, state.ema_params, state.objective_state,
                                      teacher_params, state.step)
    objective_state = metrics.pop(objectives.NEW_STATE, state.objective_state)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    if max_logit_scale:
      trainable = clamp_log_scale(trainable, max_logit_scale)
    ema = state.ema_params
    if ema is not None:
      ema = ema_lib.update(ema, trainable, ema_lib.decay_at(cfg.ema.decay, state.step, cfg.ema.warmup))
    new_state = state.replace(step=state.step + 1, params=merge_params(trainable, frozen_params),
                              opt_state=opt_state, ema_params=ema, objective_state=objective_state)
    metrics = {"loss": loss, **metrics, "lr": schedule(state.step),
               "grad_norm": optax.global_norm(grads), "param_norm": optax.global_norm(trainable)}
    return new_state, metrics

  fields = pipeline.batch_ndims(cfg.data.format, pipeline.resizes_on_device(cfg.data))
  batch_sh = {k: batch_sharding(mesh, ndim) for k, ndim in fields.items()}
  if teacher is None:
    return jax.jit(train_step, in_shardings=(state_shardings, batch_sh),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=0)
  return _WithTeacher(jax.jit(train_step, in_shardings=(state_shardings, batch_sh, teacher.shardings),
                              out_shardings=(state_shardings, replicated(mesh)), donate_argnums=0),
                      teacher.params)


class _WithTeacher:
  """A jitted train_step(state, batch, teacher_params) called, traced and lowered as (state, batch):
  the teacher's params are passed on every call (never compiled in as constants, never donated)."""

  def __init__(self, jitted, teacher_params):
    self.jitted, self.teacher_params = jitted, teacher_params

  def __call__(self, state, batch):
    return self.jitted(state, batch, self.teacher_params)

  def trace(self, state, batch):
    return self.jitted.trace(state, batch, self.teacher_params)

  def lower(self, state, batch):
    return self.jitted.lower(state, batch, self.teacher_params)

