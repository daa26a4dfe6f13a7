"""Image-conditioned masked language modelling (ALBEF's MLM) through the image-grounded text encoder.

Of each caption's maskable tokens (not padding, not the first, which the encoder's [ENC] replaces,
nor the last, EOS) 15% are selected; of those 80% become [MASK] (a learned row of the model), 10% a
random token and 10% stay. The loss is the cross-entropy of the original tokens at the selected
positions alone, over their number.

Each caption gets exactly round(15% of its maskable tokens) selections (at least one), not a
Bernoulli draw per token: the count the registry reads (the normaliser GradCache weighs micro-batches
by) must then be a function of the batch alone, and it is the number of masked tokens exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from vljax.objectives.matching import require_fusion
from vljax.objectives.registry import ModelAccess, register_objective

MASK_RATE = 0.15
MASK_FRACTION, RANDOM_FRACTION = 0.8, 0.1  # of the selected tokens; the other 10% stay as they are
MASK_STREAM = "mlm_mask"  # the named random stream the selection uses (ModelAccess.rng)


def maskable(ids: jnp.ndarray, pad_id: int) -> jnp.ndarray:
  """bool [B, L]: real tokens other than the first ([ENC]'s place) and the last (EOS)."""
  valid = ids != pad_id
  positions = jnp.arange(ids.shape[1])[None]
  last = jnp.sum(valid, axis=1, keepdims=True) - 1
  return valid & (positions > 0) & (positions != last)


def masks_per_row(ids: jnp.ndarray, pad_id: int) -> jnp.ndarray:
  """int32 [B]: round(MASK_RATE x maskable tokens), at least 1 where any token is maskable."""
  n = jnp.sum(maskable(ids, pad_id), axis=1)
  k = jnp.floor(MASK_RATE * n.astype(jnp.float32) + 0.5).astype(jnp.int32)
  return jnp.where(n > 0, jnp.maximum(k, 1), 0)


def masked_token_count(batch: dict, pad_id: int) -> jnp.ndarray:
  """The registry's count: the number of tokens the objective predicts in this batch."""
  return jnp.sum(masks_per_row(batch["text"], pad_id)).astype(jnp.float32)


def mask_tokens(ids: jnp.ndarray, rng: jax.Array, *, pad_id: int, vocab_size: int
                ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """(input ids with the random replacements [B, L], [MASK] positions [B, L], selected positions [B, L])."""
  order_key, split_key, token_key = jax.random.split(rng, 3)
  candidates = maskable(ids, pad_id)
  # A random order of each row's candidates (non-candidates last); the first k are selected.
  scores = jnp.where(candidates, jax.random.uniform(order_key, ids.shape), -1.0)
  rank = jnp.argsort(jnp.argsort(-scores, axis=1), axis=1)
  selected = candidates & (rank < masks_per_row(ids, pad_id)[:, None])
  u = jax.random.uniform(split_key, ids.shape)
  to_mask = selected & (u < MASK_FRACTION)
  to_random = selected & (u >= MASK_FRACTION) & (u < MASK_FRACTION + RANDOM_FRACTION)
  # Random tokens skip pad_id, so the encoder's key mask (ids != pad_id) keeps every real position.
  random_ids = jax.random.randint(token_key, ids.shape, 0, vocab_size - 1, dtype=ids.dtype)
  random_ids = random_ids + (random_ids >= pad_id).astype(ids.dtype)
  return jnp.where(to_random, random_ids, ids), to_mask, selected


@register_objective("mlm", reads=("fusion_memory",), couples_examples=False, count=masked_token_count,
                    passes={"mlm_logits": 1})
def mlm(outputs: dict, batch: dict, *, pad_id: int, model: ModelAccess) -> tuple[jnp.ndarray, dict]:
  """Cross-entropy of the selected tokens given the image and the rest of the (corrupted) caption."""
  require_fusion(model, "mlm")
  ids = batch["text"]
  inputs, to_mask, selected = mask_tokens(ids, model.rng(MASK_STREAM), pad_id=pad_id,
                                          vocab_size=model.module.fusion["vocab_size"])
  logits = model.apply(outputs["fusion_memory"], inputs, to_mask, method="mlm_logits", pass_name="mlm")
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, ids[..., None], axis=-1)[..., 0]
  weight = selected.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(weight), 1.0)
  correct = (jnp.argmax(logits, axis=-1) == ids).astype(jnp.float32)
  return jnp.sum(nll * weight) / count, {"mlm_acc": lax.stop_gradient(jnp.sum(correct * weight) / count)}
