"""ITC with momentum distillation (ALBEF, BLIP): CLIP's softmax contrastive loss whose one-hot
targets are mixed with the momentum model's own similarities.

  targets_i2t = alpha * softmax(s * zimg_m @ ztxt_m.T) + (1 - alpha) * I     (and t2i alike)
  loss        = mean over rows of cross-entropy(s * zimg @ ztxt.T, targets), averaged over both ways

The momentum model is the EMA of the weights the run keeps (config ema.decay; BLIP: 0.995), run
on the same batch without dropout and without gradient; s is the current logit scale, as ALBEF
scores both. Noisy web pairs make one-hot targets wrong: the momentum model's soft targets give the
captions that also fit an image some credit. alpha=0 is exactly softmax_contrastive.

  objectives = {"momentum_contrastive": {"weight": 1.0, "alpha": 0.4}}    # ALBEF's and BLIP's alpha

Over the global batch like softmax_contrastive's "gather" form (XLA gathers the embeddings).

With queue_size=Q > 0 it is ALBEF's and BLIP's ITC with a feature queue: the momentum model's
embeddings of the last Q examples (of every device) are kept in the train state and checkpoint,
and each side's online embeddings are scored against the momentum embeddings of the batch and the
queue (as ALBEF and BLIP do: the online-online form above has no queue to join):

  logits_i2t   = s * zimg   @ [ztxt_m; text_queue].T        targets as above, zero on the queue
  logits_i2t_m = s * zimg_m @ [ztxt_m; text_queue].T        (t2i alike with the image queue)

after which the batch's momentum embeddings replace the oldest in the queue. Unlike ALBEF (a queue
of random vectors at start), slots not yet filled are left out of the softmax, so the first step
scores against the batch alone. Q may be any size >= the global micro-batch (batch_size /
grad_accum_steps); a micro-batch of mean accumulation sees the queue its predecessor left. ALBEF
and BLIP: 65,536 (57,600 for BLIP's ViT-L); examples are never matched by image id, so a second
caption of a queued image counts as a negative.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
from jax import lax

from vljax.objectives.contrastive import _check_embeddings, _logits, _scalar
from vljax.objectives.registry import ModelAccess, register_objective


# The logit of a queue slot not yet filled: out of every softmax (finite, so 0 x its log-probability is 0).
_EMPTY_LOGIT = -1e9


def soft_target_loss(logits: jnp.ndarray, logits_m: jnp.ndarray, alpha: float) -> jnp.ndarray:
  """Mean over rows of cross-entropy of `logits` [N, M >= N] against alpha * softmax(logits_m) +
  (1 - alpha) * one-hot on the diagonal of the first N columns."""
  targets = alpha * jax.nn.softmax(logits_m, axis=-1) + (1.0 - alpha) * jnp.eye(*logits.shape, dtype=logits.dtype)
  return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits, axis=-1) * targets, axis=-1))


def distilled_contrastive_loss(zimg, ztxt, zimg_m, ztxt_m, logit_scale, alpha: float) -> jnp.ndarray:
  """The symmetric ITC loss with momentum targets (the module docstring); embeddings L2-normalised [N, E]."""
  _check_embeddings(zimg, ztxt)
  chex.assert_equal_shape([zimg_m, zimg])
  chex.assert_equal_shape([ztxt_m, ztxt])
  scale = _scalar(logit_scale, "logit_scale")
  logits = _logits(zimg, ztxt, scale)
  logits_m = lax.stop_gradient(_logits(zimg_m, ztxt_m, scale))
  return (soft_target_loss(logits, logits_m, alpha) + soft_target_loss(logits.T, logits_m.T, alpha)) / 2


def queued_contrastive_loss(zimg, ztxt, zimg_m, ztxt_m, queue: dict | None, logit_scale, alpha: float
                            ) -> jnp.ndarray:
  """ALBEF's ITC with a feature queue (the module docstring): online embeddings against the momentum
  embeddings of the batch and of the queue's filled slots; queue None is an empty queue."""
  _check_embeddings(zimg, ztxt)
  chex.assert_equal_shape([zimg_m, zimg])
  chex.assert_equal_shape([ztxt_m, ztxt])
  scale = _scalar(logit_scale, "logit_scale")
  img_all, txt_all, valid = zimg_m, ztxt_m, jnp.ones((zimg.shape[0],), bool)
  if queue is not None:
    img_all = jnp.concatenate([zimg_m, queue["image"].astype(zimg_m.dtype)])
    txt_all = jnp.concatenate([ztxt_m, queue["text"].astype(ztxt_m.dtype)])
    valid = jnp.concatenate([valid, jnp.arange(queue["text"].shape[0]) < queue["filled"]])

  def masked(logits):
    return jnp.where(valid[None, :], logits, _EMPTY_LOGIT)
  img_all, txt_all = lax.stop_gradient(img_all), lax.stop_gradient(txt_all)
  i2t, i2t_m = masked(_logits(zimg, txt_all, scale)), masked(_logits(zimg_m, txt_all, scale))
  t2i, t2i_m = masked(_logits(img_all, ztxt, scale).T), masked(_logits(img_all, ztxt_m, scale).T)
  i2t_m, t2i_m = lax.stop_gradient(i2t_m), lax.stop_gradient(t2i_m)
  return (soft_target_loss(i2t, i2t_m, alpha) + soft_target_loss(t2i, t2i_m, alpha)) / 2


def enqueue(queue: dict, zimg_m: jnp.ndarray, ztxt_m: jnp.ndarray) -> dict:
  """The queue with the batch's momentum embeddings in place of its oldest (slots wrap around)."""
  size, rows = queue["text"].shape[0], ztxt_m.shape[0]
  slots = (queue["next"] + jnp.arange(rows)) % size
  return dict(image=queue["image"].at[slots].set(zimg_m.astype(queue["image"].dtype)),
              text=queue["text"].at[slots].set(ztxt_m.astype(queue["text"].dtype)),
              next=(queue["next"] + rows) % size, filled=jnp.minimum(queue["filled"] + rows, size))


def init_queue(outputs: dict, batch_rows: int, options: dict) -> dict | None:
  """The empty queue of queue_size=Q (None for 0): Q momentum embeddings of each side, shaped like the
  model's (the Q-Former's per-query image embeddings too), the next slot to write, the slots filled."""
  size = options.get("queue_size", 0)
  if isinstance(size, bool) or not isinstance(size, int) or size < 0:
    raise ValueError(f"objectives.momentum_contrastive.queue_size={size!r} is invalid; valid: 0 (no queue) or a "
                     "whole number >= the global micro-batch (ALBEF and BLIP: 65536)")
  if not size:
    return None
  if size < batch_rows:
    raise ValueError(f"objectives.momentum_contrastive.queue_size={size} is smaller than the global micro-batch "
                     f"it enqueues every step ({batch_rows} rows: batch_size / grad_accum_steps); valid: 0 or "
                     f">= {batch_rows}")
  img, txt = outputs["img_emb"], outputs["txt_emb"]
  return dict(image=jnp.zeros((size, *img.shape[1:]), img.dtype), text=jnp.zeros((size, *txt.shape[1:]), txt.dtype),
              next=jnp.zeros((), jnp.int32), filled=jnp.zeros((), jnp.int32))


@register_objective("momentum_contrastive", reads=("img_emb", "txt_emb"), shared=("logit_scale",),
                    couples_examples=True, impls=("gather",), state=init_queue)
def momentum_contrastive(outputs: dict, batch: dict, *, model: ModelAccess, state: dict | None,
                         alpha: float = 0.4, queue_size: int = 0) -> tuple[jnp.ndarray, dict, Any]:
  """ITC with momentum distillation on img_emb, txt_emb and logit_scale; the momentum model embeds
  batch["image"] and batch["text"] again. With queue_size, `state` is the queue (init_queue; None
  scores against an empty one and returns none)."""
  if not 0 <= alpha <= 1:
    raise ValueError(f"objectives.momentum_contrastive.alpha={alpha!r} is invalid; valid: 0 <= alpha <= 1 "
                     "(ALBEF and BLIP: 0.4; 0 is softmax_contrastive)")
  needed_by = "objectives.momentum_contrastive"
  zimg_m = model.momentum(batch["image"], method="encode_image", needed_by=needed_by)["img_emb"]
  ztxt_m = model.momentum(batch["text"], method="encode_text", needed_by=needed_by)["txt_emb"]
  metrics = {"logit_scale": lax.stop_gradient(_scalar(outputs["logit_scale"], "logit_scale"))}
  if not queue_size:
    loss = distilled_contrastive_loss(outputs["img_emb"], outputs["txt_emb"], zimg_m, ztxt_m,
                                      outputs["logit_scale"], alpha)
    return loss, metrics, state
  loss = queued_contrastive_loss(outputs["img_emb"], outputs["txt_emb"], zimg_m, ztxt_m, state,
                                 outputs["logit_scale"], alpha)
  return loss, metrics, None if state is None else enqueue(state, zimg_m, ztxt_m)
