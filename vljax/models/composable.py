"""One vision-language model assembled from config: an image tower, an optional text encoder and
optional heads, so that objectives are compared on the same towers.

  image -> ViT -> pooled [-> attentional pooler] -> img_proj -> img_emb   (contrastive head)
             `-> tokens [-> memory pooler (memory_queries)] -> memory     (decoder head)
  text ids -> text tower -> pooled -> txt_proj -> txt_emb                 (contrastive head)
  text ids -> decoder embedding -> CrossDecoder(memory) -> caption_logits (decoder head)

  model = dict(name="composable", image=dict(variant=...), text=dict(variant=...) or None,
               contrastive=dict(embed_dim, logit_scale_init, logit_bias_init, max_logit_scale,
                                image_pool="tower" | "map") or None,
               decoder=dict(variant=..., mode="autoregressive" | "parallel", parallel_fraction,
                            memory_queries=0) or None)

CLIP/SigLIP/LiT: image + text + contrastive (a logit_bias_init gives the sigmoid loss its bias);
Cap: image + decoder; CapPa: decoder mode="parallel"; CapPa + contrastive, contrastive + captioning
on two towers, CoCa-like (image_pool="map", memory_queries=N): all three parts. The image tower never
holds a projection (its head is always off): the same tower config gives the same `img` params under
every combination, so init_from and frozen-encoder evaluations treat them alike.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from vljax.models import flops, layers, model_config
from vljax.models.capabilities import EMBEDDINGS, GENERATION, IMAGE_FEATURES, LIKELIHOOD
from vljax.models.decoder import CrossDecoder, TokenEmbedding, causal_mask
from vljax.models.layers import check_choice, partitioned
from vljax.models.pooling import MAPHead
from vljax.models.registry import register_model
from vljax.models.text import TextTransformer, text_settings
from vljax.models.two_tower import l2_normalize, temperature_param
from vljax.models.vit import ViT, vit_settings

IMAGE_POOLS = ("tower", "map")
DECODER_MODES = ("autoregressive", "parallel")
CONTRASTIVE_DEFAULTS = dict(embed_dim=128, logit_scale_init=1 / 0.07, logit_bias_init=None, max_logit_scale=100.0,
                            image_pool="tower")
DECODER_DEFAULTS = dict(mode="autoregressive", parallel_fraction=0.75, memory_queries=0)
COMPOSABLE_DEFAULTS: dict[str, Any] = dict(image=None, text=None, contrastive=None, decoder=None)


@register_model("composable")
class Composable(nn.Module):
  """Params: img (ViT, no head); with the contrastive head txt (text tower, no head), img_proj,
  txt_proj, t[, b][, img_pool]; with the decoder dec_embed, dec[, mask_embedding][, memory_pool]."""
  img: ViT
  txt: TextTransformer | None = None
  contrastive: dict[str, Any] | None = None
  text: dict[str, Any] | None = None  # the decoder's text_settings() + mode, parallel_fraction, memory_queries
  module_kw: dict[str, Any] | None = None

  capabilities = frozenset({EMBEDDINGS, GENERATION, LIKELIHOOD, IMAGE_FEATURES})  # those of some configuration
  inputs = ("image", "text")
  output_names = frozenset({"img_emb", "img_tokens", "txt_emb", "txt_tokens", "logit_scale", "logit_bias",
                            "memory", "caption_logits"})
  output_settings = {"logit_bias": "model.contrastive.logit_bias_init (SigLIP: -10.0)",
                     "img_emb": "model.contrastive=dict(...) and model.text", "txt_emb": "model.contrastive=dict(...)",
                     "logit_scale": "model.contrastive=dict(...)", "caption_logits": "model.decoder=dict(variant=...)"}
  rng_streams = ("dropout", "mask")  # "mask": which examples get parallel prediction

  def active_capabilities(self) -> frozenset[str]:
    return frozenset({IMAGE_FEATURES} | ({EMBEDDINGS} if self.contrastive else set()) |
                     ({GENERATION, LIKELIHOOD} if self.text else set()))

  def training_outputs(self) -> frozenset[str]:
    out = {"img_tokens"}
    if self.contrastive:
      out |= {"img_emb", "txt_emb", "txt_tokens", "logit_scale"}
      if self.contrastive["logit_bias_init"] is not None:
        out.add("logit_bias")
    if self.text:
      out |= {"memory", "caption_logits"}
    return frozenset(out)

  def setup(self):
    kw = dict(self.module_kw or {})
    dtypes = model_config.dtypes(kw)
    pool_kw = dict(attention_impl=kw.get("attention_impl"), **dtypes)
    if self.contrastive:
      c = self.contrastive
      if c["image_pool"] == "map":
        self.img_pool = MAPHead(self.img.num_heads, self.img.mlp_dim, num_queries=1, **pool_kw)
      self.img_proj = layers.dense(c["embed_dim"], ("embed", None), name="img_proj", **dtypes)
      self.txt_proj = layers.dense(c["embed_dim"], ("embed", None), name="txt_proj", **dtypes)
      self.t = temperature_param(self, c["logit_scale_init"])
      if c["logit_bias_init"] is not None:
        self.b = self.param("b", partitioned(nn.initializers.constant(c["logit_bias_init"]), ()), (), jnp.float32)
    if self.text:
      t = self.text
      self.dec_embed = TokenEmbedding(t["vocab_size"], t["width"], t["max_len"], **dtypes)
      if t["mode"] == "parallel":
        self.mask_embedding = self.param("mask_embedding", partitioned(nn.initializers.normal(0.02), ("embed",)),
                                         (t["width"],), dtypes["param_dtype"])
      if t["memory_queries"]:
        self.memory_pool = MAPHead(self.img.num_heads, self.img.mlp_dim, num_queries=t["memory_queries"], **pool_kw)
      self.dec = CrossDecoder(t["depth"], t["mlp_dim"], t["num_heads"], t["vocab_size"], **kw)

  def encode_image(self, image: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    pooled, tokens = self.img(image, train=train)
    out = {"img_tokens": tokens}
    if self.contrastive:
      if self.contrastive["image_pool"] == "map":
        pooled = self.img_pool(tokens)[:, 0]
      out["img_emb"] = l2_normalize(self.img_proj(pooled))
    if self.text:
      out["memory"] = self.memory_pool(tokens) if self.text["memory_queries"] else tokens
    return out

  def encode_text(self, ids: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    pooled, tokens = self.txt(ids, train=train)
    return {"txt_emb": l2_normalize(self.txt_proj(pooled)), "txt_tokens": tokens}

  def caption_logits(self, memory: jax.Array, ids: jax.Array) -> jax.Array:
    """Teacher-forced logits [B, L, vocab] of ids [B, L] given the image memory."""
    return self.dec(self.dec_embed(ids), memory, causal_mask(ids.shape[1]))

  def decode_step(self, ids: jax.Array, memory: jax.Array | None, decode_index: jax.Array) -> jax.Array:
    return self.dec(self.dec_embed(ids, decode_index), memory, decode_index=decode_index)

  def _train_caption_logits(self, memory: jax.Array, ids: jax.Array) -> jax.Array:
    """Parallel prediction (CapPa): a parallel_fraction of the examples get all-[MASK] inputs and no
    causal mask, so the decoder must read every token off the image."""
    batch, length = ids.shape
    parallel = jax.random.bernoulli(self.make_rng("mask"), self.text["parallel_fraction"], (batch,))
    x = self.dec_embed(ids, replace=parallel, replacement=self.mask_embedding)
    return self.dec(x, memory, causal_mask(length) | parallel[:, None, None, None])

  def __call__(self, image: jax.Array | None = None, text: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    out = {} if image is None else self.encode_image(image, train)
    if text is not None and self.contrastive:
      out.update(self.encode_text(text, train))
    if image is not None and text is not None and self.text:
      parallel = train and self.text["mode"] == "parallel" and self.text["parallel_fraction"] > 0
      out["caption_logits"] = (self._train_caption_logits if parallel else self.caption_logits)(out["memory"], text)
    if self.contrastive:
      out["logit_scale"] = jnp.exp(self.t)  # clamped after each update (two_tower.clamp_log_scale)
      if self.contrastive["logit_bias_init"] is not None:
        out["logit_bias"] = self.b
    return out

  @property
  def max_logit_scale(self) -> float | None:
    """The cap the train step clamps exp(t) to after each update (none without a contrastive head)."""
    return self.contrastive["max_logit_scale"] if self.contrastive else None

  @classmethod
  def from_config(cls, cfg: dict[str, Any]) -> "Composable":
    c = resolve_config(cfg)
    kw = model_config.module_kwargs(c)
    txt = TextTransformer(**c["text"], **kw) if c["contrastive"] else None
    return cls(img=ViT(**c["image"], **kw), txt=txt, contrastive=c["contrastive"], text=c["decoder"], module_kw=kw)

  @classmethod
  def flop_parts(cls, cfg: dict[str, Any], inputs: flops.Inputs) -> list[flops.Part]:
    """Forward FLOPs by part (vljax/models/flops.py), in the order of the figure above."""
    c = resolve_config(cfg)
    img, scan, length = c["image"], c["scan"], inputs.text_len
    n, dv = flops.image_tokens(img, inputs.image_size), img["width"]
    parts, tokens = flops.vit_parts(img, inputs.image_size, "img", scan=scan)
    if c["contrastive"]:
      e, pooled = c["contrastive"]["embed_dim"], parts[-1].name
      if c["contrastive"]["image_pool"] == "map":
        parts.append(flops.attention_pool("img_pool", 1, n, dv, img["mlp_dim"], tokens))
        pooled = "img_pool"
      parts.append(flops.linear("img_proj", 2 * dv * e, pooled))
      text = flops.text_parts(c["text"], length, "txt", scan=scan)
      parts += text + [flops.linear("txt_proj", 2 * c["text"]["width"] * e, text[-1].name)]
    if c["decoder"]:
      t, q = c["decoder"], c["decoder"]["memory_queries"]
      memory = (tokens, n, dv)
      if q:
        parts.append(flops.attention_pool("memory_pool", q, n, dv, img["mlp_dim"], tokens))
        memory = ("memory_pool", q, dv)
      parts.append(flops.Part("dec_embed", ("dec_embed", "mask_embedding"), reads={"text": 0.0}))
      parts += flops.encoder("dec/decoder", t["depth"], length, t["width"], t["mlp_dim"], "dec_embed", scan, memory)
      parts.append(flops.linear("dec/logits", 2 * length * t["width"] * t["vocab_size"], "dec/decoder/encoder_norm"))
    return parts


def resolve_config(cfg: dict[str, Any]) -> dict[str, Any]:
  """Validated settings with every default filled: image/text become tower settings (their heads
  off), contrastive/decoder their dicts or None."""
  c = model_config.resolve("composable", cfg, COMPOSABLE_DEFAULTS, {"image": vit_settings})
  c["image"]["head"] = False
  if not c["contrastive"] and not c["decoder"]:
    raise ValueError("composable model needs a head: model.contrastive=dict(...) and/or "
                     "model.decoder=dict(variant=...)")
  if c["contrastive"]:
    c["contrastive"] = _settings("contrastive", c["contrastive"], CONTRASTIVE_DEFAULTS)
    check_choice("contrastive.image_pool", c["contrastive"]["image_pool"], IMAGE_POOLS)
    if not c["text"]:
      raise ValueError("composable model.contrastive needs a text tower: model.text=dict(variant=...)")
    c["text"] = dict(text_settings(**c["text"]), head=False)
    if c["contrastive"]["logit_scale_init"] <= 0 or not math.isfinite(c["contrastive"]["logit_scale_init"]):
      raise ValueError(f"contrastive.logit_scale_init={c['contrastive']['logit_scale_init']} must be > 0")
  elif c["text"]:
    raise ValueError("composable model.text is the contrastive text tower: with no model.contrastive it would be "
                     "unused; drop it (the decoder's settings are model.decoder)")
  if c["decoder"]:
    d = dict(c["decoder"])
    own = {k: d.pop(k) for k in list(d) if k in DECODER_DEFAULTS}
    if "variant" not in d:
      raise ValueError(f"composable model.decoder needs variant=..., got {c['decoder']!r}")
    c["decoder"] = dict(text_settings(**d), causal=True, **_settings("decoder", own, DECODER_DEFAULTS))
    check_choice("decoder.mode", c["decoder"]["mode"], DECODER_MODES)
    if not 0.0 <= c["decoder"]["parallel_fraction"] <= 1.0:
      raise ValueError(f"decoder.parallel_fraction={c['decoder']['parallel_fraction']} must be in [0, 1]")
    if c["decoder"]["memory_queries"] < 0:
      raise ValueError(f"decoder.memory_queries={c['decoder']['memory_queries']} must be >= 0 (0: the ViT tokens)")
  if c["image"]["pool"] == "map" and not c["contrastive"]:
    model_config.check_image_tokens_only("composable (decoder only)", c["image"])
  return c


def _settings(name: str, given: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f"composable model.{name}: unknown key(s) {unknown}; valid: {sorted(defaults)}")
  return dict(defaults, **given)
