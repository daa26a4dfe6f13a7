"""Captioning: next-token cross-entropy on the caption, pads masked, optional label smoothing."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from vljax.data import tokenizers
from vljax.objectives.registry import register_objective


def captioning_loss(logits: jnp.ndarray, ids: jnp.ndarray, *, pad_id: int = tokenizers.PAD_ID,
                    label_smoothing: float = 0.0, loss_mask: jnp.ndarray | None = None
                    ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(mean cross-entropy, token accuracy) over the real target tokens of the batch.

  logits [B, L, V] are the model's outputs on ids [B, L] ([BOS] first): position t predicts
  ids[:, t+1]. The mean is over tokens, not examples, so long captions weigh more, as usual.
  `loss_mask` [B, L] (True = train this token) keeps prompts out of the loss; pad_id is the
  tokenizer's.
  """
  chex.assert_rank(logits, 3)
  chex.assert_shape(ids, logits.shape[:2])
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
  targets = ids[:, 1:]
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  if label_smoothing:
    nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
  real = targets != pad_id
  if loss_mask is not None:
    chex.assert_shape(loss_mask, ids.shape)
    real = real & loss_mask[:, 1:]
  real = real.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(real), 1.0)
  correct = (jnp.argmax(logp, axis=-1) == targets).astype(jnp.float32)
  return jnp.sum(nll * real) / count, jnp.sum(correct * real) / count


def caption_tokens(batch: dict, pad_id: int) -> jnp.ndarray:
  """The target tokens captioning_loss averages over (not pad, inside loss_mask)."""
  real = batch["text"][:, 1:] != pad_id
  if "loss_mask" in batch:
    real = real & batch["loss_mask"][:, 1:]
  return jnp.sum(real.astype(jnp.float32))


@register_objective("captioning", reads=("caption_logits",), couples_examples=False, count=caption_tokens)
def captioning(outputs: dict, batch: dict, *, impl: str = "gather", pad_id: int, label_smoothing: float = 0.0
               ) -> tuple[jnp.ndarray, dict]:
  """Teacher-forced next-token loss on outputs caption_logits and batch["text"] (and "loss_mask");
  pad_id comes from the run's tokenizer (registry.RUN_ARGS), not the config."""
  del impl  # XLA shards the token-level mean like any other reduction
  loss, accuracy = captioning_loss(outputs["caption_logits"], batch["text"], pad_id=pad_id,
                                   label_smoothing=label_smoothing, loss_mask=batch.get("loss_mask"))
  return loss, {"caption_token_acc": jax.lax.stop_gradient(accuracy)}
