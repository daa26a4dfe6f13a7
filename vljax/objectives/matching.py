"""Image-text matching on mined hard negatives (ALBEF, BLIP's ITM): for each image one negative text
and for each text one negative image, drawn with probability softmax(similarity) over the global
batch with the positive left out, from the contrastive embeddings (no gradient through the draw);
the image-grounded text encoder (the model's fusion head) then scores the B positive and 2B
negative pairs, and the loss is the cross-entropy over its 2 logits (no match, match).

Written on the global batch: under jit on a mesh XLA shards it like the "gather" contrastive losses
(the draw reads the whole B x B similarity matrix, the negatives are gathered from any device).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from vljax.models import capabilities
from vljax.objectives.contrastive import _check_embeddings, _logits, _scalar
from vljax.objectives.registry import ModelAccess, register_objective

NEGATIVES_STREAM = "itm_negatives"  # the named random stream the draw uses (ModelAccess.rng)


def sample_hard_negatives(zimg: jnp.ndarray, ztxt: jnp.ndarray, logit_scale, rng: jax.Array,
                          same: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(negative text index for each image [B], negative image index for each text [B]).

  Row i of scale * zimg @ ztxt.T gives image i's odds over the texts, column j text j's over the
  images; the diagonal (the positives) is -inf, so a positive is never drawn. BLIP draws with
  torch.multinomial over softmax(sim) with the diagonal zeroed: the same distribution.
  same: bool [B, B], pairs that are no negatives either (the same caption), left out as the diagonal
  is, except in a row where they leave nothing else.
  """
  _check_embeddings(zimg, ztxt)
  batch = zimg.shape[0]
  if batch < 2:
    raise ValueError(f"ITM hard negatives need a batch of at least 2 (a negative besides the positive), got {batch}")
  sims = lax.stop_gradient(_logits(zimg, ztxt, _scalar(logit_scale, "logit_scale")))
  eye = jnp.eye(batch, dtype=bool)
  excluded = eye if same is None else eye | same
  # Rows and columns where `same` leaves no candidate fall back to every non-positive.
  rows = jnp.where(jnp.all(excluded, axis=1, keepdims=True), eye, excluded)
  cols = jnp.where(jnp.all(excluded, axis=0, keepdims=True), eye, excluded)
  text_key, image_key = jax.random.split(rng)
  neg_text = jax.random.categorical(text_key, jnp.where(rows, -jnp.inf, sims), axis=1)
  neg_image = jax.random.categorical(image_key, jnp.where(cols, -jnp.inf, sims).T, axis=1)
  return neg_text, neg_image


def same_text(ids: jnp.ndarray) -> jnp.ndarray:
  """bool [B, B]: which captions are the same ids. Compared by a 32-bit polynomial hash of each row,
  so the cost is B x B, not B x B x L (a collision only drops one candidate negative)."""
  powers = jnp.cumprod(jnp.full((ids.shape[1],), 1_000_003, jnp.uint32))
  hashes = jnp.sum(ids.astype(jnp.uint32) * powers[None], axis=1, dtype=jnp.uint32)
  return hashes[:, None] == hashes[None, :]


def itm_pairs(memory: jnp.ndarray, text: jnp.ndarray, neg_text: jnp.ndarray, neg_image: jnp.ndarray
              ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """(image tokens [3B, N, D], texts [3B, L], labels [3B]): B positives, each image with its negative
  text, each text with its negative image (label 1 = match)."""
  batch = text.shape[0]
  images = jnp.concatenate([memory, memory, memory[neg_image]], axis=0)
  texts = jnp.concatenate([text, text[neg_text], text], axis=0)
  labels = jnp.concatenate([jnp.ones((batch,), jnp.int32), jnp.zeros((2 * batch,), jnp.int32)])
  return images, texts, labels


def require_fusion(model: ModelAccess, objective: str) -> None:
  """A clear error when the model has no image-grounded text encoder to run."""
  if capabilities.MATCHING not in capabilities.of(model.module):
    raise ValueError(f"objective {objective!r} runs the image-grounded text encoder, which model "
                     f"{type(model.module).__name__} does not have; valid: a composable model with "
                     f"model.fusion=dict(share='none', variant=...) or dict(share='blip'), or model.name='qformer'")


@register_objective("itm", reads=("img_emb", "txt_emb", "fusion_memory"), shared=("logit_scale",),
                    couples_examples=True, impls=("gather",), passes={"itm_logits": 3})  # 3B pairs (itm_pairs)
def itm(outputs: dict, batch: dict, *, model: ModelAccess, exclude_same_text: bool = True
        ) -> tuple[jnp.ndarray, dict]:
  """BLIP's ITM: mean cross-entropy over the 3B pairs' (no match, match) logits.
  exclude_same_text: a caption identical to the positive is no negative (templated captions repeat;
  BLIP leaves out the pairs of the same image id for the same reason)."""
  require_fusion(model, "itm")
  same = same_text(batch["text"]) if exclude_same_text else None
  neg_text, neg_image = sample_hard_negatives(outputs["img_emb"], outputs["txt_emb"], outputs["logit_scale"],
                                              model.rng(NEGATIVES_STREAM), same)
  images, texts, labels = itm_pairs(outputs["fusion_memory"], batch["text"], neg_text, neg_image)
  logits = model.apply(images, texts, method="itm_logits", pass_name="itm")
  logp = jax.nn.log_softmax(logits, axis=-1)
  loss = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))
  accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
  return loss, {"itm_acc": lax.stop_gradient(accuracy)}
