"""Flamingo (Alayrac et al. 2022): a frozen language model reads interleaved images and text
through gated cross-attention to a Perceiver resampler's latents.

  images [B, M] -> ViT tokens -> Perceiver resampler (num_latents per image) -> media [B, M*n, D]
  ids "<image> caption: ...<eoc><image> question: ... answer: ...<eoc>"
      -> token embedding -> for each LM layer i:
           every `cross_attn_every_n_layers`-th: x += tanh(a) * xattn(x, media); x += tanh(b) * ffw(x)
           x = LM block i (causal self-attention, MLP)
      -> logits

Each text token sees only the latest "<image>" at or before it (or, with
only_attend_immediate_media=False, every such image); text before the first image sees none.
The gates a, b start at 0, so the untrained model is exactly its language model. The language
model keeps LanguageModel's names (txt, lm/block_i, lm/encoder_norm, logits) and the vision tower
the ViT's (img/...), so both load from earlier runs with init_from and are frozen by default.

lm="hf:DIR" (or a dict of causal_lm SETTINGS) makes the language model a pretrained LM's architecture
(vljax/models/causal_lm.py: GPT-2, OPT, Llama, Mistral, Qwen2) instead of `text`'s, with the same names; its
weights come from the workdir `python -m vljax.convert --checkpoint DIR` writes (init_from sources
"WORKDIR:txt,lm,logits"), data.tokenizer is the folder's, and its new token rows (txt/new_tokens:
"<image>", "<eoc>") stay trainable when frozen names txt/embedding, lm and logits/kernel.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import linen as nn

from vljax.models import causal_lm, flops, layers, model_config
from vljax.models.capabilities import GENERATION, IMAGE_FEATURES, MULTI_IMAGE, PROMPTED
from vljax.models.decoder import TokenEmbedding, causal_mask, encode_and_caption, vocab_logits
from vljax.models.layers import MlpBlock, MultiHeadAttention, REMAT_POLICIES, layer_norm, partitioned
from vljax.models.registry import register_model
from vljax.models.vit import ViT

FLAMINGO_DEFAULTS: dict[str, Any] = dict(
    image=None, text=None, num_latents=64, resampler_depth=2, cross_attn_every_n_layers=1,
    only_attend_immediate_media=True, image_token_id=None,
    lm=None)  # "hf:DIR" or a dict of causal_lm SETTINGS: a pretrained LM's architecture instead of `text`


class PerceiverResampler(nn.Module):
  """Vision tokens [B, N, D] -> [B, num_latents, D]: learned latents attend to the vision tokens
  concatenated with themselves (keys/values), then an MLP, `depth` times; final LayerNorm."""
  num_latents: int
  depth: int
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, _, width = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    latents = self.param("latents", partitioned(nn.initializers.normal(0.02), (None, "embed")),
                         (self.num_latents, width), self.param_dtype)
    latents = jnp.broadcast_to(latents.astype(x.dtype)[None], (batch, self.num_latents, width))
    for i in range(self.depth):
      media = layer_norm(name=f"media_norm_{i}", **kw)(x)
      queries = layer_norm(name=f"latent_norm_{i}", **kw)(latents)
      kv = jnp.concatenate([media, queries], axis=1)
      latents = latents + MultiHeadAttention(self.num_heads, cross=True, name=f"attn_{i}", **kw)(queries, kv)
      latents = latents + MlpBlock(self.mlp_dim, name=f"mlp_{i}", **kw)(layer_norm(name=f"mlp_norm_{i}", **kw)(latents))
    return layer_norm(name="norm", **kw)(latents)


class GatedCrossAttention(nn.Module):
  """x + tanh(attn_gate) * xattn(LN(x), media), then x + tanh(ffw_gate) * MLP(LN(x)); gates start at 0."""
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, media: jax.Array | None, mask: jax.Array, sees_media: jax.Array,
               decode_index: jax.Array | None = None) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    gate = lambda name: jnp.tanh(self.param(name, partitioned(nn.initializers.zeros, ()), (), jnp.float32))
    y = MultiHeadAttention(self.num_heads, cross=True, attention_impl=self.attention_impl, name="attn", **kw)(
        layer_norm(name="attn_norm", **kw)(x), media, mask=mask, decode_index=decode_index)
    # A token with no image to see gets nothing (not the mean over its all-masked keys).
    x = x + gate("attn_gate").astype(x.dtype) * jnp.where(sees_media[..., None], y, 0)
    return x + gate("ffw_gate").astype(x.dtype) * MlpBlock(self.mlp_dim, name="mlp", **kw)(
        layer_norm(name="mlp_norm", **kw)(x))


class LanguageBlocks(nn.Module):
  """The LM's blocks one at a time, named as layers.Transformer(scan=False) names them."""
  depth: int
  mlp_dim: int
  num_heads: int
  remat: str = "none"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str | None = None

  def setup(self):
    block_cls = layers.TransformerBlock
    if self.remat != "none":
      block_cls = nn.remat(layers.TransformerBlock, policy=REMAT_POLICIES[self.remat])
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.block = [block_cls(self.mlp_dim, self.num_heads, attention_impl=self.attention_impl, **kw)
                  for _ in range(self.depth)]
    self.encoder_norm = layer_norm(name="encoder_norm", **kw)

  def layer(self, i: int, x: jax.Array, mask: jax.Array | None, decode_index: jax.Array | None) -> jax.Array:
    return self.block[i](x, mask, None, decode_index)[0]

  def norm(self, x: jax.Array) -> jax.Array:
    return self.encoder_norm(x)


class MediaCount(nn.Module):
  """Decoding state: how many images each prompt holds (its generated text sees the last one)."""

  @nn.compact
  def __call__(self, count: jax.Array | None = None) -> jax.Array:
    var = self.variable("cache", "count", lambda: jnp.zeros_like(count))
    if count is not None:
      var.value = count
    return var.value


def media_attention(counts: jax.Array, num_images: int, num_latents: int, immediate: bool
                    ) -> tuple[jax.Array, jax.Array]:
  """(mask [B, 1, L, images*latents], sees_media [B, L]) from counts [B, L]: how many "<image>"
  tokens each text position has at or before it."""
  image_of_key = jnp.arange(num_images * num_latents) // num_latents
  latest = counts[..., None] - 1
  allowed = (image_of_key == latest) if immediate else (image_of_key <= latest)
  return allowed[:, None], counts > 0


@register_model("flamingo")
class Flamingo(nn.Module):
  """Params: img (ViT), resampler, txt, lm (block_i, encoder_norm), xattn_j, logits."""
  img: ViT
  text: dict[str, Any]
  num_latents: int = 64
  resampler_depth: int = 2
  cross_attn_every_n_layers: int = 1
  only_attend_immediate_media: bool = True
  image_token_id: int = -1
  module_kw: dict[str, Any] | None = None
  pretrained_lm: bool = False  # text holds causal_lm settings (config lm=...), not a text tower's
  image_prompted = True  # captions and answers continue a text prompt after the images
  capabilities = frozenset({GENERATION, PROMPTED, MULTI_IMAGE, IMAGE_FEATURES})
  inputs = ("image", "text")
  output_names = frozenset({"memory", "caption_logits"})  # of the training pass
  rng_streams = ("dropout",)
  needs_image_token = True  # setup fills image_token_id from the tokenizer

  def setup(self):
    kw = dict(self.module_kw or {})
    dtypes = model_config.dtypes(kw)
    t, img = self.text, self.img
    self.resampler = PerceiverResampler(self.num_latents, self.resampler_depth, img.num_heads, img.mlp_dim,
                                        **dtypes)
    if self.pretrained_lm:
      self.txt, _, head = causal_lm.language_modules(t, kw)
      self.lm = causal_lm.LayerByLayer(t, remat=kw.get("remat", "none"), attention_impl=kw.get("attention_impl"),
                                       **dtypes)
    else:
      self.txt = TokenEmbedding(t["vocab_size"], t["width"], t["max_len"], **dtypes)
      self.lm = LanguageBlocks(t["depth"], t["mlp_dim"], t["num_heads"], remat=kw.get("remat", "none"),
                               attention_impl=kw.get("attention_impl"), **dtypes)
      head = layers.dense(t["vocab_size"], ("embed", "vocab"), name="logits", **dtypes)
    self.xattn = [GatedCrossAttention(t["num_heads"], t["mlp_dim"], attention_impl=kw.get("attention_impl"),
                                      **dtypes) for _ in range(0, t["depth"], self.cross_attn_every_n_layers)]
    if head is not None:  # a pretrained LM's tied table has none
      self.logits = head
    self.media_count = MediaCount()

  def encode_image(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """images [B, M, H, W, 3] -> memory [B, M, num_latents, D] (resampled vision tokens)."""
    chex.assert_rank(images, 5)
    batch, m = images.shape[:2]
    tokens = self.img(images.reshape(batch * m, *images.shape[2:]), train=train)[1]
    latents = self.resampler(tokens)
    return {"memory": latents.reshape(batch, m, *latents.shape[1:])}

  def _run(self, x, media, self_mask, counts, decode_index):
    """The LM over embedded text x [B, L, D], cross-attending to media [B, M, n, D] (None: cached)."""
    num_images = media.shape[1] if media is not None else self._cached_images()
    mask, sees_media = media_attention(counts, num_images, self.num_latents, self.only_attend_immediate_media)
    flat = None if media is None else media.reshape(media.shape[0], -1, media.shape[-1])
    if self.pretrained_lm:  # its blocks take positions (RoPE) and mask causally themselves
      self_mask = causal_lm.positions_of(x.shape[1], decode_index, self.text["max_len"])
    for i in range(self.text["depth"]):
      if i % self.cross_attn_every_n_layers == 0:
        x = self.xattn[i // self.cross_attn_every_n_layers](x, flat, mask, sees_media, decode_index)
      x = self.lm.layer(i, x, self_mask, decode_index)
    if self.pretrained_lm:
      return causal_lm.head_logits(self, self.lm.final_norm(x))
    return vocab_logits(self.logits, self.lm.norm(x))

  def _embed(self, ids: jax.Array, decode_index: jax.Array | int = 0) -> jax.Array:
    if self.pretrained_lm:
      return self.txt.add_positions(self.txt.tokens(ids), decode_index)
    return self.txt(ids, decode_index)

  def _cached_images(self) -> int:
    """Images in the cross-attention cache (decoding steps pass no media)."""
    key = self.xattn[0].variables["cache"]["attn"]["cross_key"]
    return key.shape[1] // self.num_latents

  def caption_logits(self, memory: jax.Array, ids: jax.Array) -> jax.Array:
    counts = jnp.cumsum(ids == self.image_token_id, axis=1)
    return self._run(self._embed(ids), memory, causal_mask(ids.shape[1]), counts, None)

  def decode_step(self, ids: jax.Array, memory: jax.Array | None, decode_index: jax.Array) -> jax.Array:
    """KV-cached logits; the call given the memory (the prompt's prefill) also records how many
    images each prompt has, which the generated tokens then attend to (the last one)."""
    if memory is not None:
      counts = jnp.cumsum(ids == self.image_token_id, axis=1)
      self.media_count(counts[:, -1])
    else:
      counts = jnp.broadcast_to(self.media_count()[:, None], ids.shape)
    return self._run(self._embed(ids, decode_index), memory, None, counts, decode_index)

  def __call__(self, image: jax.Array | None = None, text: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    """memory (if image) and caption_logits (if both)."""
    return encode_and_caption(self, image, text, train)

  @classmethod
  def from_config(cls, cfg: dict[str, Any]) -> "Flamingo":
    c = resolve_config(cfg)
    kw = model_config.module_kwargs(c)
    return cls(img=ViT(**c["image"], **kw), text=c["text"], num_latents=c["num_latents"],
               resampler_depth=c["resampler_depth"], cross_attn_every_n_layers=c["cross_attn_every_n_layers"],
               only_attend_immediate_media=c["only_attend_immediate_media"], image_token_id=c["image_token_id"],
               module_kw=kw, pretrained_lm=c["lm"] is not None)

  @classmethod
  def flop_parts(cls, cfg: dict[str, Any], inputs: flops.Inputs) -> list[flops.Part]:
    """Forward FLOPs by part (vljax/models/flops.py): every image of the example through the ViT and
    the resampler; every text token's cross-attention over all images' latents (the media mask
    hides most, but they are computed)."""
    c = resolve_config(cfg)
    img, t, m, k = c["image"], c["text"], c["num_latents"], inputs.images
    n, dv, d, length = flops.image_tokens(img, inputs.image_size), img["width"], t["width"], inputs.text_len
    vit, tokens = flops.vit_parts(img, inputs.image_size, "img")
    # Per resampler layer: query, keys and values of [vision tokens, latents] (one matmul: its input
    # gradient covers the vision tokens too once the latents need one), output, MLP.
    layer = (2 * m * dv * dv + 4 * (n + m) * dv * dv + 2 * m * dv * dv + 4 * m * dv * img["mlp_dim"],
             4 * m * (n + m) * dv)
    depth = k * c["resampler_depth"]
    parts = flops.times(vit, k) + [flops.Part("resampler", ("resampler",), float(depth * layer[0]),
                                              float(depth * layer[1]), {tokens: 0.0})]
    parts.append(flops.Part("txt", ("txt",), reads={"text": 0.0}))
    last, s = "txt", k * m  # keys: every image's latents
    for i in range(t["depth"]):
      if i % c["cross_attn_every_n_layers"] == 0:
        name, q, kv = f"xattn_{i // c['cross_attn_every_n_layers']}", 2 * length * d * d, 4 * s * dv * d
        parts.append(flops.Part(name, (name,), float(q + kv + 2 * length * d * d + 4 * length * d * t["mlp_dim"]),
                                float(4 * length * s * d), {last: 0.0, "resampler": float(kv)}))
        last = name
      if c["lm"] is not None:
        parts.append(causal_lm.block_part(t, f"lm/block_{i}", length, last))
      else:
        parts.append(flops.block(f"lm/block_{i}", length, d, t["mlp_dim"], last))
      last = parts[-1].name
    return parts + flops.decoder_lm(dict(t, depth=0), length, last)


def resolve_config(cfg: dict[str, Any]) -> dict[str, Any]:
  """With lm set, `text` becomes the pretrained LM's causal_lm settings (and must not be given)."""
  c = causal_lm.resolve_image_lm("flamingo", cfg, FLAMINGO_DEFAULTS)
  model_config.check_image_tokens_only("flamingo", c["image"])
  if c["scan"]:
    raise ValueError("flamingo interleaves cross-attention between the LM's layers: scan=True is not "
                     "supported; valid: scan=False")
  for key in ("num_latents", "resampler_depth", "cross_attn_every_n_layers"):
    if c[key] < 1:
      raise ValueError(f"flamingo {key} must be >= 1, got {c[key]}")
  if c["image_token_id"] is None:
    raise ValueError("flamingo config needs image_token_id (the tokenizer's <image> id; the trainer fills it)")
  return c
