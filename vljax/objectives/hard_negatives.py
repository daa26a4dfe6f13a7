"""Contrastive losses with hard negative captions (NegCLIP, Yuksekgonul et al. 2023): each image's
caption twins with the binding broken (data.format="hard_negatives") join the texts it must not
match. The twins are embedded by a second pass of the text tower on the step's parameters.

  softmax: image -> text cross-entropy over the batch's captions and every valid twin in the
           batch (CLIP's text -> image direction unchanged: twins have no image);
  sigmoid: SigLIP's pairwise loss plus every (image, twin) pair as a negative, over the batch size.

With no valid twin both equal their plain forms exactly. They are written on the global batch:
under jit on a mesh XLA shards them like the "gather" contrastive losses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from vljax.objectives.contrastive import _ce_sum, _check_embeddings, _logits, _scalar
from vljax.objectives.registry import ModelAccess, register_objective

def twin_embeddings(batch: dict, model: ModelAccess) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(L2-normalised embeddings [B*K, E] of the twins, valid [B*K])."""
  if "neg_text" not in batch:
    raise ValueError(f"hard-negative objectives need batch field 'neg_text' (data.format='hard_negatives'); "
                     f"the batch has {sorted(batch)}")
  b, k, length = batch["neg_text"].shape
  out = model.apply(text=batch["neg_text"].reshape(b * k, length), pass_name="hard_negatives")
  return out["txt_emb"], batch["neg_mask"].reshape(b * k)


def softmax_hard_negatives_loss(zimg, ztxt, zneg, valid, logit_scale) -> jnp.ndarray:
  _check_embeddings(zimg, ztxt)
  scale = _scalar(logit_scale, "logit_scale")
  logits = _logits(zimg, ztxt, scale)
  # Invalid twins' columns drop out: -inf adds exp(-inf) = 0 to every row's normaliser.
  to_twins = jnp.where(valid[None], _logits(zimg, zneg, scale), -jnp.inf)
  labels = jnp.arange(logits.shape[0])
  i2t = _ce_sum(jnp.concatenate([logits, to_twins], axis=1), labels)
  t2i = _ce_sum(logits.T, labels)
  return (i2t + t2i) / (2 * logits.shape[0])


def sigmoid_hard_negatives_loss(zimg, ztxt, zneg, valid, logit_scale, logit_bias) -> jnp.ndarray:
  _check_embeddings(zimg, ztxt)
  scale, bias = _scalar(logit_scale, "logit_scale"), _scalar(logit_bias, "logit_bias")
  logits = _logits(zimg, ztxt, scale) + bias
  labels = 2.0 * jnp.eye(*logits.shape, dtype=jnp.float32) - 1.0
  pairs = -jax.nn.log_sigmoid(labels * logits).sum()
  twins = jnp.where(valid[None], -jax.nn.log_sigmoid(-(_logits(zimg, zneg, scale) + bias)), 0.0).sum()
  return (pairs + twins) / zimg.shape[0]


@register_objective("softmax_hard_negatives", reads=("img_emb", "txt_emb"), shared=("logit_scale",),
                    couples_examples=True, impls=("gather",))
def softmax_hard_negatives(outputs: dict, batch: dict, *, model: ModelAccess) -> tuple[jnp.ndarray, dict]:
  """CLIP's loss with each caption's twins as extra negatives (NegCLIP)."""
  zneg, valid = twin_embeddings(batch, model)
  loss = softmax_hard_negatives_loss(outputs["img_emb"], outputs["txt_emb"], zneg, valid, outputs["logit_scale"])
  return loss, {"logit_scale": lax.stop_gradient(_scalar(outputs["logit_scale"], "logit_scale")),
                "hard_negative_fraction": jnp.mean(valid.astype(jnp.float32))}


@register_objective("sigmoid_hard_negatives", reads=("img_emb", "txt_emb"), shared=("logit_scale", "logit_bias"),
                    couples_examples=True, impls=("gather",))
def sigmoid_hard_negatives(outputs: dict, batch: dict, *, model: ModelAccess) -> tuple[jnp.ndarray, dict]:
  """SigLIP's loss with each (image, twin) pair as an extra negative."""
  zneg, valid = twin_embeddings(batch, model)
  loss = sigmoid_hard_negatives_loss(outputs["img_emb"], outputs["txt_emb"], zneg, valid,
                                     outputs["logit_scale"], outputs["logit_bias"])
  metrics = {"logit_scale": _scalar(outputs["logit_scale"], "logit_scale"),
             "logit_bias": _scalar(outputs["logit_bias"], "logit_bias"),
             "hard_negative_fraction": jnp.mean(valid.astype(jnp.float32))}
  return loss, jax.tree.map(lax.stop_gradient, metrics)
