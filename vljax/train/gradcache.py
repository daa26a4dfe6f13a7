"""GradCache (Gao et al. 2021): a contrastive loss over the whole global batch at the activation
memory of one micro-batch.

  pass 1, no gradient:  micro-batch j -> model -> img_emb_j, txt_emb_j (+ logit_scale, logit_bias)
  whole batch:          L = contrastive(concat_j emb_j); G = dL / d(embeddings, scalars)
  pass 2, per j:        recompute micro-batch j under autodiff and pull G_j back through it,
                        plus the gradient of the per-example objectives (captioning) on j

The pass-2 gradients sum to the gradient of the single full-batch step: every example is a
negative for every other, yet only one micro-batch's activations are alive at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from vljax import objectives
from vljax.data import tokenizers
from vljax.parallel.sharding import BATCH_AXES

ApplyFn = Callable[[Any, Any, dict, jax.Array], dict]
# (trainable, frozen, rng) -> objectives.ModelAccess, for per-example objectives that run the model.
AccessFn = Callable[[Any, Any, jax.Array], objectives.ModelAccess]


def take_micro(tree: Any, k: int, j: jax.Array | int) -> Any:
  """Micro-batch j of k from [B, ...] arrays: examples j, k+j, 2k+j..., so every device keeps its own
  rows. A free reshape to [B/k, k, ...] and a slice: no copy of the whole batch is made."""
  def take(x):
    x = x.reshape(x.shape[0] // k, k, *x.shape[1:])
    return lax.with_sharding_constraint(lax.dynamic_index_in_dim(x, j, axis=1, keepdims=False), P(BATCH_AXES))
  return jax.tree.map(take, tree)


def merge_micro(tree: Any) -> Any:
  """Stacked micro-batches [k, B/k, ...] (take_micro j at j) -> [B, ...] in the original row order."""
  def merge(x):
    x = x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    return lax.with_sharding_constraint(x, P(BATCH_AXES))
  return jax.tree.map(merge, tree)


def check_objectives(spec: Mapping[str, Any]) -> dict[str, tuple[float, dict]]:
  """parse_objectives(spec), failing on an objective that gradcache cannot split exactly: one that
  couples examples and runs passes of the model of its own (their inputs span the whole batch)."""
  parsed = objectives.parse_objectives(spec)
  unsupported = sorted(n for n in parsed if _info(n).couples_examples and _info(n).drives_model
                       or _info(n).state is not None)
  if unsupported:
    splits = sorted(n for n, info in objectives.OBJECTIVES.items()
                    if not (info.couples_examples and info.drives_model))
    raise ValueError(f"grad_accum_mode='gradcache' cannot split objective(s) {unsupported} over micro-batches "
                     f"exactly: they couple examples and run the model on inputs from the whole batch; it "
                     f"splits {splits}; use grad_accum_mode='mean' for the others")
  return parsed


def _info(name: str) -> objectives.ObjectiveInfo:
  return objectives.get_objective(name)


def _as_spec(parsed: Mapping[str, tuple[float, dict]]) -> dict[str, dict]:
  return {name: dict(weight=w, **options) for name, (w, options) in parsed.items()}


def _micro_weights(name: str, batch: dict, k: int, pad_id: int) -> jax.Array:
  """[k] shares of a per-example objective: micro-batch j weighs max(count_j, 1) / max(count, 1)."""
  counts = jax.vmap(lambda j: _info(name).count(take_micro(batch, k, j), pad_id))(jnp.arange(k))
  return jnp.maximum(counts, 1.0) / jnp.maximum(counts.sum(), 1.0)


def _check_outputs(out: dict, keys: list[str], cross: Mapping[str, Any]) -> None:
  missing = sorted(set(keys) - set(out))
  if missing:
    raise ValueError(f"objectives {sorted(cross)} need model outputs {missing}; the model returned {sorted(out)}")


def _pull(cotangent: jax.Array, value: jax.Array) -> jax.Array:
  """<cotangent, value>: its gradient w.r.t. value is exactly `cotangent` (a VJP as a scalar)."""
  return jnp.sum(cotangent * value.astype(cotangent.dtype))


def gradcache_value_and_grad(apply_fn: ApplyFn, loss_spec: Mapping[str, Any], trainable: Any, frozen: Any,
                             batch: dict, rng: jax.Array, *, k: int, impl: str = "gather",
                             pad_id: int = tokenizers.PAD_ID, access: AccessFn | None = None) -> tuple:
  """(loss, metrics, grads) of the combined loss on the whole `batch`, one of its k micro-batches of
  activations at a time.

  apply_fn(trainable, frozen, micro, rng) -> model outputs. Micro-batch j (take_micro) runs with rng
  fold_in(rng, j) in both passes, so dropout masks match. Metrics carry the keys that
  objectives.combined_loss gives on the whole batch. pad_id: the run's tokenizer's, for the
  captioning loss and its token count alike. access: for objectives that run the model (per
  example only: check_objectives), on micro-batch j's params and key.
  """
  parsed = check_objectives(loss_spec)
  cross = {n: v for n, v in parsed.items() if _info(n).couples_examples}
  local = {n: v for n, v in parsed.items() if not _info(n).couples_examples}
  example_keys = sorted({key for n in cross for key in _info(n).reads})
  shared_keys = sorted({key for n in cross for key in _info(n).shared})
  steps = jnp.arange(k)

  def outputs(params, j):
    out = apply_fn(params, frozen, take_micro(batch, k, j), jax.random.fold_in(rng, j))
    _check_outputs(out, example_keys + shared_keys, cross)
    return out

  # Pass 1: only the small outputs the cross-example loss needs survive each micro-batch.
  g_example, g_shared, metrics = {}, {}, {}
  cross_loss = jnp.zeros((), jnp.float32)
  if cross:
    def embed(_, j):
      out = outputs(trainable, j)
      return None, lax.stop_gradient({key: out[key] for key in example_keys + shared_keys})
    _, cached = lax.scan(embed, None, steps)
    emb = merge_micro({key: cached[key] for key in example_keys})
    # Params-only outputs are equal in every micro-batch: micro-batch 0's stand for the step.
    shared = {key: cached[key][0] for key in shared_keys}

    def cross_fn(emb, shared):
      return objectives.combined_loss(_as_spec(cross), {**emb, **shared}, {}, impl=impl)
    (cross_loss, metrics), (g_example, g_shared) = jax.value_and_grad(cross_fn, argnums=(0, 1), has_aux=True)(
        emb, shared)

  weights = {name: _micro_weights(name, batch, k, pad_id) for name in local}

  def local_loss(params, out, j):
    total, extra = jnp.zeros((), jnp.float32), {}
    model = access(params, frozen, jax.random.fold_in(rng, j)) if access else None
    for name, (w, options) in local.items():
      loss, m = objectives.call_objective(name, out, take_micro(batch, k, j), options, impl=impl, pad_id=pad_id,
                                          model=model)
      share = weights[name][j]
      total = total + w * share * loss
      extra.update({key: share * v for key, v in m.items()})
      extra[f"{name}_loss"] = share * loss
    return total, extra

  # Pass 2: recompute each micro-batch under autodiff; pull back its rows of G, plus G of the
  # params-only outputs once (j == 0), not k times.
  def backward_one(j):
    g_rows = take_micro(g_example, k, j)
    first = (j == 0).astype(jnp.float32)

    def surrogate(params):
      out = outputs(params, j)
      pulled = sum((_pull(g_rows[key], out[key]) for key in example_keys), jnp.zeros((), jnp.float32))
      pulled += first * sum((_pull(g_shared[key], out[key]) for key in shared_keys), jnp.zeros((), jnp.float32))
      loss, extra = local_loss(params, out, j)
      return pulled + loss, (loss, extra)

    (_, (loss, extra)), grads = jax.value_and_grad(surrogate, has_aux=True)(trainable)
    # Summed in float32: k additions in bfloat16 would lose the small micro-batches' digits.
    return loss, extra, jax.tree.map(lambda g: g.astype(jnp.float32), grads)

  def backward(acc, j):
    return jax.tree.map(jnp.add, acc, backward_one(j)), None

  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(backward_one, steps[0]))
  (local_total, local_metrics, grads), _ = lax.scan(backward, zeros, steps)
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, trainable)
  loss = cross_loss + local_total
  return loss, {**metrics, **local_metrics, "loss": loss}, grads
