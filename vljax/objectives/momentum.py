"""ITC with momentum distillation (ALBEF, BLIP): CLIP's softmax contrastive loss whose one-hot
targets are mixed with the momentum model's own similarities.

  targets_i2t = alpha * softmax(s * zimg_m @ ztxt_m.T) + (1 - alpha) * I     (and t2i alike)
  loss        = mean over rows of cross-entropy(s * zimg @ ztxt.T, targets), averaged over both ways

The momentum model is the EMA of the weights the run keeps (config ema.decay; BLIP: 0.995), run
on the same batch without dropout and without gradient; s is the current logit scale, as ALBEF
scores both. Noisy web pairs make one-hot targets wrong: the momentum model's soft targets give the
captions that also fit an image some credit. alpha=0 is exactly softmax_contrastive.

  objectives = {"momentum_contrastive": {"weight": 1.0, "alpha": 0.4}}    # ALBEF's and BLIP's alpha

Over the global batch like softmax_contrastive's "gather" form (XLA gathers the embeddings); no
feature queue (ALBEF's 65,536 past momentum embeddings): the batch's are the negatives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from vljax.objectives.contrastive import _check_embeddings, _logits, _scalar
from vljax.objectives.registry import ModelAccess, register_objective


def soft_target_loss(logits: jnp.ndarray, logits_m: jnp.ndarray, alpha: float) -> jnp.ndarray:
  """Mean over rows of cross-entropy of `logits` [N, N] against alpha * softmax(logits_m) + (1 - alpha)
  * identity."""
  targets = alpha * jax.nn.softmax(logits_m, axis=-1) + (1.0 - alpha) * jnp.eye(logits.shape[0], dtype=logits.dtype)
  return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits, axis=-1) * targets, axis=-1))


def distilled_contrastive_loss(zimg, ztxt, zimg_m, ztxt_m, logit_scale, alpha: float) -> jnp.ndarray:
  """The symmetric ITC loss with momentum targets (the module docstring); embeddings L2-normalised [N, E]."""
  _check_embeddings(zimg, ztxt)
  _check_embeddings(zimg_m, zimg)
  scale = _scalar(logit_scale, "logit_scale")
  logits = _logits(zimg, ztxt, scale)
  logits_m = lax.stop_gradient(_logits(zimg_m, ztxt_m, scale))
  return (soft_target_loss(logits, logits_m, alpha) + soft_target_loss(logits.T, logits_m.T, alpha)) / 2


@register_objective("momentum_contrastive", reads=("img_emb", "txt_emb"), shared=("logit_scale",),
                    couples_examples=True, impls=("gather",))
def momentum_contrastive(outputs: dict, batch: dict, *, model: ModelAccess, alpha: float = 0.4
                         ) -> tuple[jnp.ndarray, dict]:
  """ITC with momentum distillation on img_emb, txt_emb and logit_scale; the momentum model embeds
  batch["image"] and batch["text"] again."""
  if not 0 <= alpha <= 1:
    raise ValueError(f"objectives.momentum_contrastive.alpha={alpha!r} is invalid; valid: 0 <= alpha <= 1 "
                     "(ALBEF and BLIP: 0.4; 0 is softmax_contrastive)")
  needed_by = "objectives.momentum_contrastive"
  zimg_m = model.momentum(batch["image"], method="encode_image", needed_by=needed_by)["img_emb"]
  ztxt_m = model.momentum(batch["text"], method="encode_text", needed_by=needed_by)["txt_emb"]
  loss = distilled_contrastive_loss(outputs["img_emb"], outputs["txt_emb"], zimg_m, ztxt_m,
                                    outputs["logit_scale"], alpha)
  return loss, {"logit_scale": lax.stop_gradient(_scalar(outputs["logit_scale"], "logit_scale"))}
