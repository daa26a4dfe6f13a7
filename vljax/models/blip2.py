"""BLIP-2 stage 1: a Q-Former (vljax/models/qformer.py) learns to read an image encoder (frozen by
config, e.g. frozen=("img/.*",) with init_from a CLIP run's img) with three objectives in one step,
each through its attention mask:

  ITC  softmax_contrastive on img_emb [B, Q, E] (one embedding per query, from a pass of the queries
       alone) and txt_emb [B, E] (the text alone, its first token's output, as BERT's [CLS]); an
       image-text similarity is the max over the queries (vljax/objectives/contrastive.py)
  ITG  captioning on caption_logits: queries and text in one pass under the causal mask
  ITM  itm on hard negatives mined from the ITC similarities (vljax/objectives/matching.py): each
       pair in one pass under the bidirectional mask, the match logits averaged over the queries

  model = dict(name="qformer", image=dict(variant=...), text=dict(variant=..., <text keys>),
               num_queries=32, cross_every=2, embed_dim=256, logit_scale_init=1 / 0.07)

Params: img (ViT), qformer (queries, embedding, posemb, encoder), img_proj, txt_proj, itm_head, t.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from vljax.models import flops, layers, model_config
from vljax.models.capabilities import EMBEDDINGS, IMAGE_FEATURES, MATCHING
from vljax.models.composable import l2_normalize, temperature_param
from vljax.models.qformer import make_qformer, qformer_parts, qformer_settings
from vljax.models.registry import register_model
from vljax.models.vit import ViT, vit_settings

QFORMER_DEFAULTS: dict[str, Any] = dict(image=None, text=None, num_queries=32, cross_every=2, embed_dim=256,
                                        logit_scale_init=1 / 0.07, max_logit_scale=100.0)


@register_model("qformer")
class QFormerModel(nn.Module):
  """Image tower + Q-Former + the heads of BLIP-2's three stage-1 objectives."""
  img: ViT
  text: dict[str, Any]  # the Q-Former's settings (qformer_settings: its text keys, num_queries, cross_every)
  embed_dim: int = 256
  logit_scale_init: float = 1 / 0.07
  max_logit_scale: float = 100.0
  module_kw: dict[str, Any] | None = None

  # Contrastive embeddings in query form: the evaluators score them by the best query
  # (vljax/inference/embedding_scores.py).
  capabilities = frozenset({EMBEDDINGS, IMAGE_FEATURES, MATCHING})
  inputs = ("image", "text")
  output_names = frozenset({"img_emb", "txt_emb", "logit_scale", "caption_logits", "fusion_memory"})
  rng_streams = ("dropout",)

  def setup(self):
    kw = dict(self.module_kw or {})
    dtypes = model_config.dtypes(kw)
    self.qformer = make_qformer(self.text, kw)
    self.img_proj = layers.dense(self.embed_dim, ("embed", None), name="img_proj", **dtypes)
    self.txt_proj = layers.dense(self.embed_dim, ("embed", None), name="txt_proj", **dtypes)
    self.itm_head = layers.dense(2, ("embed", None), name="itm_head", **dtypes)
    self.t = temperature_param(self, self.logit_scale_init)

  def image_tokens(self, image: jax.Array, train: bool = False) -> jax.Array:
    """The image tower's tokens [B, N, Dv]: what the queries cross-attend to."""
    return self.img(image, train=train)[1]

  def itm_logits(self, image_tokens: jax.Array, ids: jax.Array) -> jax.Array:
    """(no match, match) logits [B, 2] of each pair: queries and text under the bidirectional mask,
    the head's logits averaged over the query outputs (BLIP-2)."""
    queries, _ = self.qformer(image_tokens, ids, "bidirectional")
    return jnp.mean(self.itm_head(queries).astype(jnp.float32), axis=1)

  def caption_logits(self, image_tokens: jax.Array, ids: jax.Array) -> jax.Array:
    """Teacher-forced next-token logits [B, L, vocab]: the text sees every query and itself causally."""
    _, text = self.qformer(image_tokens, ids, "causal")
    return self.qformer.vocab_logits(text)

  def __call__(self, image: jax.Array | None = None, text: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    out = {"logit_scale": jnp.exp(self.t)}  # clamped after each update (clamp_log_scale)
    if image is not None:
      tokens = self.image_tokens(image, train)
      queries, _ = self.qformer(tokens, None)
      out["img_emb"] = l2_normalize(self.img_proj(queries))
      out["fusion_memory"] = tokens
    if text is not None:
      _, text_out = self.qformer(None, text, "text")
      out["txt_emb"] = l2_normalize(self.txt_proj(text_out[:, 0]))
    if image is not None and text is not None:
      out["caption_logits"] = self.caption_logits(out["fusion_memory"], text)
      if self.is_initializing():  # ITM's passes run from its objective: create the head here
        self.itm_logits(out["fusion_memory"], text)
    return out

  @classmethod
  def flop_parts(cls, cfg: dict[str, Any], inputs: flops.Inputs, passes: dict[str, float] | None = None
                 ) -> list[flops.Part]:
    """The image tower; the Q-Former's passes of the queries alone, of the text alone, and of both
    under the causal mask (ITG) with its vocabulary head; projections; ITM's further passes."""
    c = resolve_config(cfg)
    img, t, length = c["image"], c["text"], inputs.text_len
    q = t["num_queries"]
    parts, tokens = flops.vit_parts(img, inputs.image_size, "img", scan=c["scan"])
    memory = (tokens, flops.image_tokens(img, inputs.image_size), img["width"])
    d, e = t["width"], c["embed_dim"]
    parts.append(flops.Part("qformer/inputs", ("qformer/queries", "qformer/embedding", "qformer/posemb"),
                            reads={"text": 0.0}))
    # The queries alone (ITC), the text alone (ITC), both under the causal mask (ITG): one chain of
    # blocks, whose weights every pass uses.
    blocks = qformer_parts(t, "qformer", [(q, 0), (0, length), (q, length)], memory, "qformer/inputs")
    vocab = float(2 * length * d * t["vocab_size"])
    parts += blocks + [flops.Part("qformer/encoder/encoder_norm", ("qformer/encoder/encoder_norm",),
                                  reads={blocks[-1].name: 0.0}),
                       flops.linear("img_proj", 2 * q * d * e, "qformer/encoder/encoder_norm"),
                       flops.linear("txt_proj", 2 * d * e, "qformer/encoder/encoder_norm"),
                       flops.Part("qformer/vocab", ("qformer/embedding",), vocab,  # tied to the token embedding
                                  reads={"qformer/encoder/encoder_norm": vocab}),
                       flops.Part("itm_head", ("itm_head",))]  # run by ITM's passes alone
    for method, runs in (passes or {}).items():
      if method != "itm_logits":
        raise flops.UncountedPass(f"model 'qformer' counts no pass of method {method!r}; it counts 'itm_logits'")
      itm = qformer_parts(t, "qformer", [(q, length)], memory, "qformer/inputs")
      itm.append(flops.linear("itm_head", 2 * q * d * 2, itm[-1].name))
      parts += flops.further_pass(method, itm, runs)
    return parts

  @classmethod
  def from_config(cls, cfg: dict[str, Any]) -> "QFormerModel":
    c = resolve_config(cfg)
    kw = model_config.module_kwargs(c)
    return cls(img=ViT(**c["image"], **kw), text=c["text"], embed_dim=c["embed_dim"],
               logit_scale_init=c["logit_scale_init"], max_logit_scale=c["max_logit_scale"], module_kw=kw)


def resolve_config(cfg: dict[str, Any]) -> dict[str, Any]:
  """The settings; `text` becomes the Q-Former's (qformer_settings), num_queries and cross_every in it."""
  c = model_config.resolve("qformer", cfg, QFORMER_DEFAULTS, {"image": vit_settings})
  model_config.check_image_tokens_only("qformer", c["image"])
  c["text"] = qformer_settings(dict(c["text"] or {}, num_queries=c["num_queries"], cross_every=c["cross_every"]))
  if not isinstance(c["embed_dim"], int) or isinstance(c["embed_dim"], bool) or c["embed_dim"] < 1:
    raise ValueError(f"qformer config embed_dim={c['embed_dim']!r} is invalid; valid: an integer >= 1")
  if not c["logit_scale_init"] > 0:
    raise ValueError(f"qformer config logit_scale_init={c['logit_scale_init']!r} is invalid; valid: > 0")
  return c
