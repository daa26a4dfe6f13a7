"""The legacy model classes (two_tower, coca, cappa) as they were before the recipes moved to the
composable model: the reference that tests/test_legacy_equivalence.py holds vljax/models/legacy.py's
translations to, and the writer of legacy checkpoints for the resume and load tests. Each emits its
ops in the composable model's order (masks after embeddings, CoCa's causal text tower), so the two
lower to one program. Not registered: `model.name="two_tower"` etc. build the composable model."""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import linen as nn

from vljax.models import flops, layers, model_config
from vljax.models.capabilities import EMBEDDINGS, GENERATION, IMAGE_FEATURES, LIKELIHOOD
from vljax.models.composable import l2_normalize, temperature_param
from vljax.models.decoder import CrossDecoder, TokenEmbedding, causal_mask
from vljax.models.layers import check_choice, partitioned
from vljax.models.legacy import resolve_cappa, resolve_coca, resolve_two_tower
from vljax.models.pooling import MAPHead
from vljax.models.text import TextTransformer
from vljax.models.vit import ViT

# Keys of the model config (besides "name") and their defaults.
def logit_params(module: nn.Module, scale_init: float, bias_init: float | None) -> dict[str, jax.Array]:
  """logit_scale (param t) and, when bias_init is given, logit_bias (param b) of a compact module."""
  out = {"logit_scale": jnp.exp(temperature_param(module, scale_init))}
  if bias_init is not None:
    out["logit_bias"] = module.param("b", partitioned(nn.initializers.constant(bias_init), ()), (),
                                     jnp.float32)
  return out


class TwoTower(nn.Module):
  """Params: img/... (tower + img/head), txt/... (tower + txt/head), t (log scale), b (bias, SigLIP).

  A tower with head=False has no img/head (txt/head): its pooled width is the embedding (SigLIP's
  image tower).
  """
  capabilities = frozenset({EMBEDDINGS, IMAGE_FEATURES})
  inputs = ("image", "text")
  output_names = frozenset({"img_emb", "img_tokens", "txt_emb", "txt_tokens", "logit_scale", "logit_bias"})
  output_settings = {"logit_bias": "model.logit_bias_init (SigLIP: -10.0)"}  # the setting that adds each
  rng_streams = ("dropout",)
  img: ViT
  txt: TextTransformer
  logit_scale_init: float = 1 / 0.07
  logit_bias_init: float | None = None
  max_logit_scale: float = 100.0  # the trainer clamps exp(t) to it after each update

  @nn.compact
  def __call__(self, image: jax.Array | None = None, text: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    """Returns img_emb/img_tokens (if image), txt_emb/txt_tokens (if text), logit_scale[, logit_bias]."""
    out = {}
    if image is not None:
      pooled, out["img_tokens"] = self.img(image, train=train)
      out["img_emb"] = l2_normalize(pooled)
    if text is not None:
      pooled, out["txt_tokens"] = self.txt(text, train=train)
      out["txt_emb"] = l2_normalize(pooled)
    if image is not None and text is not None:
      chex.assert_equal_shape([out["img_emb"], out["txt_emb"]])

    out.update(logit_params(self, self.logit_scale_init, self.logit_bias_init))
    return out

  def training_outputs(self) -> frozenset[str]:
    """output_names, less the bias when there is none (CLIP, LiT)."""
    return self.output_names - (set() if self.logit_bias_init is not None else {"logit_bias"})

  @classmethod
  def from_config(cls, cfg: dict[str, Any]) -> "TwoTower":
    """Build from a model config dict (keys: TWO_TOWER_DEFAULTS; "name" already removed)."""
    c = _two_tower(cfg)
    shared = dict(out_dim=c["embed_dim"], **model_config.module_kwargs(c))
    return cls(img=ViT(**c["image"], **shared), txt=TextTransformer(**c["text"], **shared),
               logit_scale_init=c["logit_scale_init"], logit_bias_init=c["logit_bias_init"],
               max_logit_scale=c["max_logit_scale"])

  @classmethod
  def flop_parts(cls, cfg: dict[str, Any], inputs: flops.Inputs) -> list[flops.Part]:
    """Forward FLOPs by part (vljax/models/flops.py): the two towers, each with its head."""
    c = _two_tower(cfg)
    image, _ = flops.vit_parts(c["image"], inputs.image_size, "img", c["embed_dim"], c["scan"])
    return image + flops.text_parts(c["text"], inputs.text_len, "txt", c["embed_dim"], c["scan"])


class CoCa(nn.Module):
  """Params: img (ViT), pool_caption, pool_contrastive, img_head, txt (embeddings), cls, unimodal,
  txt_head, multimodal (decoder + vocab head), t, and b when logit_bias_init is set (sigmoid loss)."""
  capabilities = frozenset({EMBEDDINGS, GENERATION, LIKELIHOOD, IMAGE_FEATURES})
  inputs = ("image", "text")
  output_names = frozenset({"img_emb", "memory", "txt_emb", "txt_tokens", "caption_logits", "logit_scale",
                            "logit_bias"})  # of the training pass
  output_settings = {"logit_bias": "model.logit_bias_init (SigLIP: -10.0)"}
  rng_streams = ("dropout",)
  img: ViT
  text: dict[str, Any]  # text_settings(): width, depth, mlp_dim, num_heads, vocab_size, max_len, pad_id
  embed_dim: int
  multimodal_depth: int
  pooler: str = "cascade"
  num_queries: int = 256
  logit_scale_init: float = 1 / 0.07
  logit_bias_init: float | None = None
  max_logit_scale: float = 100.0
  module_kw: dict[str, Any] | None = None  # scan, remat, attention_impl, dtype, param_dtype

  def setup(self):
    check_choice("CoCa pooler", self.pooler, ("cascade", "parallel"))
    kw = dict(self.module_kw or {})
    dtypes = model_config.dtypes(kw)
    t, img = self.text, self.img
    pool_kw = dict(attention_impl=kw.get("attention_impl"), **dtypes)
    self.pool_caption = MAPHead(img.num_heads, img.mlp_dim, num_queries=self.num_queries, **pool_kw)
    self.pool_contrastive = MAPHead(img.num_heads, img.mlp_dim, num_queries=1, **pool_kw)
    self.img_head = layers.dense(self.embed_dim, ("embed", None), name="img_head", **dtypes)
    self.txt = TokenEmbedding(t["vocab_size"], t["width"], t["max_len"], **dtypes)
    self.cls = self.param("cls", partitioned(nn.initializers.normal(0.02), ("embed",)), (t["width"],),
                          dtypes["param_dtype"])
    self.unimodal = layers.Transformer(t["depth"], t["mlp_dim"], t["num_heads"], causal=True, **kw)
    self.txt_head = layers.dense(self.embed_dim, ("embed", None), name="txt_head", **dtypes)
    self.multimodal = CrossDecoder(self.multimodal_depth, t["mlp_dim"], t["num_heads"], t["vocab_size"], **kw)
    self.t = temperature_param(self, self.logit_scale_init)
    if self.logit_bias_init is not None:
      self.b = self.param("b", partitioned(nn.initializers.constant(self.logit_bias_init), ()), (), jnp.float32)

  def encode_image(self, image: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    _, tokens = self.img(image, train=train)
    memory = self.pool_caption(tokens)
    pooled = self.pool_contrastive(memory if self.pooler == "cascade" else tokens)[:, 0]
    return {"memory": memory, "img_emb": l2_normalize(self.img_head(pooled))}

  def encode_text(self, ids: jax.Array) -> dict[str, jax.Array]:
    """Unimodal pass with [CLS] appended after the padding; [CLS] sees every real token."""
    chex.assert_rank(ids, 2)
    batch, length = ids.shape
    valid = ids != self.text["pad_id"]
    x = self.txt(ids)
    cls = jnp.broadcast_to(self.cls.astype(x.dtype), (batch, 1, x.shape[-1]))
    x = jnp.concatenate([x, cls], axis=1)
    # Only the [CLS] row masks pad keys: the token rows stay plain causal, as in caption_logits.
    keys = jnp.concatenate([valid, jnp.ones((batch, 1), bool)], axis=1)
    is_cls = jnp.arange(length + 1) == length
    x = self.unimodal(x, keys[:, None, None, :] | ~is_cls[:, None])
    pooled, tokens = x[:, -1], x[:, :-1]
    return {"txt_emb": l2_normalize(self.txt_head(pooled)), "txt_tokens": tokens}

  def caption_logits(self, memory: jax.Array, ids: jax.Array) -> jax.Array:
    """Teacher-forced logits [B, L, vocab] of ids [B, L] given the image memory."""
    x = self.unimodal(self.txt(ids))
    return self.multimodal(x, memory, causal_mask(ids.shape[1]))

  def decode_step(self, ids: jax.Array, memory: jax.Array | None, decode_index: jax.Array) -> jax.Array:
    """Logits for ids [B, T] at positions decode_index.. with both decoders' KV caches."""
    x = self.unimodal(self.txt(ids, decode_index), decode_index=decode_index)
    return self.multimodal(x, memory, decode_index=decode_index)

  def __call__(self, image: jax.Array | None = None, text: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    """img_emb/memory (if image), txt_emb (if text), caption_logits (if both), logit_scale."""
    out = {}
    if image is not None:
      out.update(self.encode_image(image, train))
    if text is not None:
      out.update(self.encode_text(text))
    if image is not None and text is not None:
      # One unimodal pass serves both losses: causal, so [CLS] at the end changes no text token.
      out["caption_logits"] = self.multimodal(out["txt_tokens"], out["memory"], causal_mask(text.shape[1]))
    out["logit_scale"] = jnp.exp(self.t)  # clamped after each update (two_tower.clamp_log_scale)
    if self.logit_bias_init is not None:
      out["logit_bias"] = self.b
    return out

  def training_outputs(self) -> frozenset[str]:
    """output_names, less the bias when there is none (softmax CoCa)."""
    return self.output_names - (set() if self.logit_bias_init is not None else {"logit_bias"})

  @classmethod
  def from_config(cls, cfg: dict[str, Any]) -> "CoCa":
    c = _coca(cfg)
    kw = model_config.module_kwargs(c)
    return cls(img=ViT(**c["image"], **kw), text=c["text"], embed_dim=c["embed_dim"],
               multimodal_depth=c["multimodal_depth"], pooler=c["pooler"], num_queries=c["num_queries"],
               logit_scale_init=c["logit_scale_init"], logit_bias_init=c["logit_bias_init"],
               max_logit_scale=c["max_logit_scale"], module_kw=kw)

  @classmethod
  def flop_parts(cls, cfg: dict[str, Any], inputs: flops.Inputs) -> list[flops.Part]:
    """Forward FLOPs by part (vljax/models/flops.py), in the order of the figure above."""
    c = _coca(cfg)
    img, t, q, scan = c["image"], c["text"], c["num_queries"], c["scan"]
    n, dv, d, length = flops.image_tokens(img, inputs.image_size), img["width"], t["width"], inputs.text_len
    parts, tokens = flops.vit_parts(img, inputs.image_size, "img", scan=scan)
    parts.append(flops.attention_pool("pool_caption", q, n, dv, img["mlp_dim"], tokens))
    cascade = c["pooler"] == "cascade"
    parts.append(flops.attention_pool("pool_contrastive", 1, q if cascade else n, dv, img["mlp_dim"],
                                      "pool_caption" if cascade else tokens))
    parts.append(flops.linear("img_head", 2 * dv * c["embed_dim"], "pool_contrastive"))
    parts.append(flops.Part("txt", ("txt", "cls"), reads={"text": 0.0}))
    parts += flops.encoder("unimodal", t["depth"], length + 1, d, t["mlp_dim"], "txt", scan)  # + [CLS]
    parts.append(flops.linear("txt_head", 2 * d * c["embed_dim"], "unimodal/encoder_norm"))
    parts += flops.encoder("multimodal/decoder", c["multimodal_depth"], length, d, t["mlp_dim"],
                           "unimodal/encoder_norm", scan, memory=("pool_caption", q, dv))
    return parts + [flops.linear("multimodal/logits", 2 * length * d * t["vocab_size"],
                                 "multimodal/decoder/encoder_norm")]


class CapPa(nn.Module):
  """Params: img (ViT), txt (embeddings), mask_embedding, dec (decoder + vocab head)."""
  img: ViT
  text: dict[str, Any]  # text_settings() of the decoder
  parallel_fraction: float = 0.75
  module_kw: dict[str, Any] | None = None
  capabilities = frozenset({GENERATION, LIKELIHOOD, IMAGE_FEATURES})
  inputs = ("image", "text")
  output_names = frozenset({"memory", "caption_logits"})  # of the training pass
  rng_streams = ("dropout", "mask")  # "mask": which examples get parallel prediction

  def setup(self):
    kw = dict(self.module_kw or {})
    dtypes = model_config.dtypes(kw)
    t = self.text
    self.txt = TokenEmbedding(t["vocab_size"], t["width"], t["max_len"], **dtypes)
    self.mask_embedding = self.param("mask_embedding", partitioned(nn.initializers.normal(0.02), ("embed",)),
                                     (t["width"],), dtypes["param_dtype"])
    self.dec = CrossDecoder(t["depth"], t["mlp_dim"], t["num_heads"], t["vocab_size"], **kw)

  def encode_image(self, image: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    return {"memory": self.img(image, train=train)[1]}

  def caption_logits(self, memory: jax.Array, ids: jax.Array) -> jax.Array:
    x = self.txt(ids)
    return self.dec(x, memory, causal_mask(ids.shape[1]))

  def decode_step(self, ids: jax.Array, memory: jax.Array | None, decode_index: jax.Array) -> jax.Array:
    return self.dec(self.txt(ids, decode_index), memory, decode_index=decode_index)

  def __call__(self, image: jax.Array | None = None, text: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    """memory (if image) and caption_logits (if both; parallel prediction when training)."""
    out = {} if image is None else self.encode_image(image, train)
    if image is None or text is None:
      return out
    batch, length = text.shape
    if train and self.parallel_fraction > 0:
      parallel = jax.random.bernoulli(self.make_rng("mask"), self.parallel_fraction, (batch,))
      x = self.txt(text, replace=parallel, replacement=self.mask_embedding)
      mask = causal_mask(length) | parallel[:, None, None, None]
    else:
      x = self.txt(text)
      mask = causal_mask(length)
    out["caption_logits"] = self.dec(x, out["memory"], mask)
    return out

  @classmethod
  def from_config(cls, cfg: dict[str, Any]) -> "CapPa":
    c = _cappa(cfg)
    kw = model_config.module_kwargs(c)
    return cls(img=ViT(**c["image"], **kw), text=c["text"], parallel_fraction=c["parallel_fraction"],
               module_kw=kw)

  @classmethod
  def flop_parts(cls, cfg: dict[str, Any], inputs: flops.Inputs) -> list[flops.Part]:
    """Forward FLOPs by part (vljax/models/flops.py): ViT, then the decoder reading its tokens."""
    c = _cappa(cfg)
    img, t, length = c["image"], c["text"], inputs.text_len
    parts, tokens = flops.vit_parts(img, inputs.image_size, "img", scan=c["scan"])
    parts.append(flops.Part("txt", ("txt", "mask_embedding"), reads={"text": 0.0}))
    memory = (tokens, flops.image_tokens(img, inputs.image_size), img["width"])
    parts += flops.encoder("dec/decoder", t["depth"], length, t["width"], t["mlp_dim"], "txt", c["scan"], memory)
    return parts + [flops.linear("dec/logits", 2 * length * t["width"] * t["vocab_size"], "dec/decoder/encoder_norm")]


def _two_tower(cfg: dict[str, Any]) -> dict[str, Any]:
  return resolve_two_tower(cfg)


def _coca(cfg: dict[str, Any]) -> dict[str, Any]:
  c = resolve_coca(cfg)
  c["text"]["causal"] = True  # CoCa's text decoders are always causal
  return c


def _cappa(cfg: dict[str, Any]) -> dict[str, Any]:
  c = resolve_cappa(cfg)
  c["text"]["causal"] = True
  return c


CLASSES = {"two_tower": TwoTower, "coca": CoCa, "cappa": CapPa}


def build(cfg: dict[str, Any]) -> nn.Module:
  """The legacy class a legacy model config names, built from it."""
  cfg = dict(cfg)
  return CLASSES[cfg.pop("name")].from_config(cfg)
