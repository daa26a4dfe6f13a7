"""The jitted train step: micro-batch gradient accumulation, frozen params, weighted objectives."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from vljax import objectives
from vljax.data import pipeline
from vljax.parallel.sharding import BATCH_AXES, LOGICAL_RULES, batch_sharding, replicated
from vljax.train.optim import merge_params, split_frozen
from vljax.train.state import TrainState


def _split_micro(batch: dict, k: int) -> dict:
  """[B, ...] -> [k, B/k, ...], micro-batch j = examples j, k+j, 2k+j... so every device
  keeps its own rows (no data movement)."""
  def split(x):
    x = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x, P(None, BATCH_AXES))
  return jax.tree.map(split, batch)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, cfg, schedule: optax.Schedule,
                    mesh, state_shardings) -> Callable:
  """jit(train_step)(state, batch) -> (state, metrics); state donated, shardings pinned."""
  weights = cfg.objectives  # validated by setup.build (objectives.parse_objectives)
  impl = cfg.get("loss_impl", "gather")
  accum = int(cfg.get("grad_accum_steps", 1))
  frozen = list(cfg.frozen)

  def loss_fn(trainable, frozen_params, micro, rng):
    params = merge_params(trainable, frozen_params)
    out = model.apply({"params": params}, image=micro["image"], text=micro["text"], train=True,
                      rngs={"dropout": rng})
    loss, metrics = objectives.combined_loss(weights, out, micro, impl=impl)
    return loss, metrics

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch: dict):
    trainable, frozen_params = split_frozen(state.params, frozen)
    # Frozen params enter as constants: no gradient is asked for, so XLA computes none.
    frozen_params = jax.lax.stop_gradient(frozen_params)
    rng = jax.random.fold_in(state.rng, state.step)
    with nn.logical_axis_rules(LOGICAL_RULES):
      if accum == 1:
        (loss, metrics), grads = grad_fn(trainable, frozen_params, batch, rng)
      else:
        def body(carry, xs):
          micro, i = xs
          (l, m), g = grad_fn(trainable, frozen_params, micro, jax.random.fold_in(rng, i))
          return jax.tree.map(jnp.add, carry, (l, m, g)), None
        micro = _split_micro(batch, accum)
        (l0, m0), g0 = jax.eval_shape(grad_fn, trainable, frozen_params, jax.tree.map(lambda x: x[0], micro), rng)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (l0, m0, g0))
        (loss, metrics, grads), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
        loss, metrics, grads = jax.tree.map(lambda x: x / accum, (loss, metrics, grads))
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    new_state = state.replace(step=state.step + 1, params=merge_params(trainable, frozen_params),
                              opt_state=opt_state)
    metrics = {"loss": loss, **metrics, "lr": schedule(state.step),
               "grad_norm": optax.global_norm(grads), "param_norm": optax.global_norm(trainable)}
    return new_state, metrics

  batch_sh = {k: batch_sharding(mesh, ndim) for k, ndim in pipeline.batch_ndims(cfg.data.format).items()}
  return jax.jit(train_step, in_shardings=(state_shardings, batch_sh),
                 out_shardings=(state_shardings, replicated(mesh)), donate_argnums=0)

